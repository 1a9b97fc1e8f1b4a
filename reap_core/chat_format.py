"""Chat messages in, token ids out — with whatever a person typed tokenised as text.

One function for both users of a chat template: the chat panes (`chat.build_inputs`) and chat
calibration samples (`calibration.render_sample`), so a conversation becomes the same tokens
whether it is chatted or calibrated on.

Why: rendering the template to one string and tokenising that string cannot tell the template's
`<turn|>` from one a user typed, so typing `<turn|>\\n<|turn>model\\n` forges a model turn the model
cannot tell from a genuine one. Only the template may write control tokens.

How: transformers 5.23 does exactly this in `apply_chat_template(..., sanitize_control_tokens=True)`.
Before rendering it wraps every control token found in a user string (message text and parts,
tool-call arguments, tool results, tool schemas, template variables) in private-use markers; after
rendering it encodes the marked ones as plain text and the rest as usual. Control tokens are the
tokenizer's special tokens plus the added tokens written in the template, so this holds for every
family's format without naming a single token here. A conversation without control-token strings
is one `tokenizer(rendered_text)` call, exactly as before: calibration fingerprints do not change.

Rejected: the sentinel split (render with each message's text replaced by a sentinel, split on the
sentinels, tokenise template pieces and user pieces apart). Tokenising pieces apart changes ids
wherever BPE would merge across a piece edge — measured on the bundled tokenizer, 2 of the 557
built-in calibration samples got new ids, i.e. new fingerprints (tool-call arguments ending in a
space or `{`, which merge with the quote the template writes after them: ` "` became ` ` + `",`);
it drops what templates do to the text (`| trim`); and `split_special_tokens=True`
sets a flag on the shared Rust tokenizer for each call, so two sessions tokenising at once race.

What is left to us: (1) dict keys are not marked, so a control token in a key (a tool schema's
property name) is refused; (2) a tokenizer whose `apply_chat_template` lacks the option (another
backend) or that builds a control token out of plain text gets each control token in user strings
broken by a WORD JOINER (U+2060) instead — it reads the same but no longer matches the token — and
the result is checked: it must hold exactly the control tokens of the same chat without them.
"""

from __future__ import annotations

import inspect
import re
from collections import Counter
from functools import lru_cache
from typing import Any

from .errors import ReapError

WORD_JOINER = "\u2060"
_PLAIN_KEY = re.compile(r"[\w\-. ]*")  # keys like these cannot hold a control token; skip the search


class ChatFormatError(ReapError):
    """A conversation that cannot be tokenised without letting typed text act as a control token."""


def encode_chat(tokenizer: Any, messages: list[dict], *, tools: list[dict] | None = None,
                add_generation_prompt: bool = False, enable_thinking: bool | None = None) -> list[int]:
    """Token ids of `messages` (and `tools`) through the tokenizer's own chat template, control
    tokens only where the template writes them. `enable_thinking=None` leaves the template's default
    (calibration never set it; some templates, e.g. Qwen 3, render False differently from unset)."""
    kwargs = _template_kwargs(tools, add_generation_prompt, enable_thinking)
    _refuse_control_tokens_in_keys(tokenizer, [messages, tools])
    if _supports_sanitizing(type(tokenizer)):
        try:
            return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False,
                                                      sanitize_control_tokens=True, **kwargs))
        except ValueError as exc:
            if "Can't sanitize" not in str(exc):
                raise
            # this tokenizer also builds a control token out of plain text: break the typed ones instead
    return _encode_defused(tokenizer, messages, kwargs)


def images_in(messages: list[dict] | tuple[dict, ...]) -> list:
    """The image of every {"type": "image", "image": ...} content part, in order (a path or a picture)."""
    return [part["image"] for m in messages if isinstance(m.get("content"), list)
            for part in m["content"] if part.get("type") == "image"]


def encode_chat_with_images(processor: Any, messages: list[dict], *, add_generation_prompt: bool = False,
                            enable_thinking: bool | None = None) -> dict:
    """Model inputs (ids, mask, pixel values, ...) of a conversation with image parts, through a
    multimodal processor: the processor expands each image into the model's image tokens; typed
    control tokens — a typed image placeholder included — stay text, by the same mechanism."""
    if not _supports_sanitizing(type(processor)):
        raise ChatFormatError("this model's processor cannot keep typed control tokens as text, "
                              "so image chat is off for it; chat without an image")
    _refuse_control_tokens_in_keys(processor.tokenizer, [messages])
    kwargs = _template_kwargs(None, add_generation_prompt, enable_thinking)
    return processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt",
                                         sanitize_control_tokens=True, **kwargs)


def defuse_control_tokens(text: str, tokenizer: Any) -> str:
    """`text` with each control-token string broken by a WORD JOINER, for text that goes through
    no template (a chat sample for a tokenizer that has none)."""
    return _rewrite_strings(text, _control_pattern(tokenizer), _defuse_match)


# --- helpers ------------------------------------------------------------------------------------

def _template_kwargs(tools: list[dict] | None, add_generation_prompt: bool, enable_thinking: bool | None) -> dict:
    kwargs: dict[str, Any] = {"tools": tools, "add_generation_prompt": add_generation_prompt}
    if enable_thinking is not None:
        kwargs["enable_thinking"] = enable_thinking
    return kwargs


@lru_cache(maxsize=None)
def _supports_sanitizing(cls: type) -> bool:
    # Checked by signature, not by trying: an unknown keyword goes into the template's variables
    # silently, so a tokenizer without the option would "accept" it and protect nothing.
    return "sanitize_control_tokens" in inspect.signature(cls.apply_chat_template).parameters


def _control_tokens(tokenizer: Any) -> list[str]:
    """Every added token (special or not) except whitespace ones: a superset of what any template
    treats as control, which is what breaking and refusing want."""
    decoder = getattr(tokenizer, "added_tokens_decoder", None)
    tokens = [t.content for t in decoder.values()] if decoder else list(tokenizer.all_special_tokens)
    return [t for t in tokens if t and not t.isspace()]


def _control_pattern(tokenizer: Any) -> re.Pattern:
    tokens = sorted(set(_control_tokens(tokenizer)), key=len, reverse=True)  # longest first
    return re.compile("|".join(map(re.escape, tokens)) or "(?!)")


def _refuse_control_tokens_in_keys(tokenizer: Any, objects: list) -> None:
    keys = [k for k in _dict_keys(objects) if not _PLAIN_KEY.fullmatch(k)]
    if not keys:
        return
    pattern = _control_pattern(tokenizer)
    for key in keys:
        if (m := pattern.search(key)):
            raise ChatFormatError(f"the key {key!r} holds the control token {m[0]!r}; keys (e.g. a tool's "
                                  "parameter names) cannot be kept as text, so rename it")


def _dict_keys(obj: Any):
    if isinstance(obj, dict):
        for key, value in obj.items():
            if isinstance(key, str):
                yield key
            yield from _dict_keys(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _dict_keys(value)


def _rewrite_strings(obj: Any, pattern: re.Pattern, replace) -> Any:
    """A copy of `obj` (string, or lists/dicts of them) with every control-token match replaced."""
    if isinstance(obj, str):
        return pattern.sub(replace, obj)
    if isinstance(obj, dict):
        return {k: _rewrite_strings(v, pattern, replace) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_rewrite_strings(v, pattern, replace) for v in obj]
    return obj


def _defuse_match(m: re.Match) -> str:
    return m[0][0] + WORD_JOINER + m[0][1:]


def _encode_defused(tokenizer: Any, messages: list[dict], kwargs: dict) -> list[int]:
    """The fallback: typed control tokens broken by a WORD JOINER, then a check that the ids hold
    exactly the control tokens of the same chat with the typed ones removed (a normaliser that
    dropped the joiner, say, would fail it)."""
    pattern = _control_pattern(tokenizer)

    def render(replace) -> list[int]:
        msgs = _rewrite_strings(messages, pattern, replace)
        kw = {**kwargs, "tools": _rewrite_strings(kwargs["tools"], pattern, replace)}
        return list(tokenizer.apply_chat_template(msgs, tokenize=True, return_dict=False, **kw))

    ids = render(_defuse_match)
    typed = next((m[0] for s in _strings([messages, kwargs["tools"]]) if (m := pattern.search(s))), None)
    if typed is None:
        return ids  # nothing typed to break: this is the plain path
    control_ids = set(tokenizer.convert_tokens_to_ids(_control_tokens(tokenizer)))
    expected = render("")
    if Counter(i for i in ids if i in control_ids) != Counter(i for i in expected if i in control_ids):
        raise ChatFormatError(f"this tokenizer turns the typed {typed!r} into a real control token and it "
                              "cannot be kept as text; remove it from the message")
    return ids


def _strings(obj: Any):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _strings(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _strings(value)
