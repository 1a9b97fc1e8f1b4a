"""Chat with one model object as several variants at once (original, pruned, ...), streaming.

Each variant generates in its own thread inside its own `masked_view`, so the panes share one
copy of the weights and never see each other's mask. New tokens from all threads arrive on
one queue; the caller gets the full decoded text of every variant after each token.

The prompt is tokenised by `chat_format` (typed control tokens stay text) and can be capped in
tokens (`max_prompt_tokens`) and, before any tokenising, in characters (`check_prompt_length`),
so one visitor's 100,000-character message cannot hold the shared queue for a minute.

Gemma 4 reasoning comes as `<|channel>thought\\n ... <channel|>` before the answer; it is split
off so a UI can fold it away, and the answer is what is kept in the conversation.
"""

from __future__ import annotations

import queue
import re
import threading
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from .chat_format import encode_chat, encode_chat_with_images
from .errors import ReapError
from .masking import masked_view
from .model import LoadedModel
from .plan import PruningPlan

THOUGHT_OPEN, THOUGHT_CLOSE = "<|channel>", "<channel|>"
_END_MARKERS = ("<turn|>", "<eos>", "<end_of_turn>")


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 200
    temperature: float = 0.0        # 0 = greedy (reproducible: both panes comparable token by token)
    top_p: float = 0.95
    thinking: bool = False


def split_reasoning(text: str) -> tuple[str, str]:
    """(reasoning, answer) of a raw model output; reasoning is '' when there is none."""
    for end in _END_MARKERS:          # whatever follows the end of the turn is not the answer
        text = text.split(end)[0]
    text = text.replace("<bos>", "").replace("<pad>", "")
    reasoning = ""
    if THOUGHT_OPEN in text:
        before, _, rest = text.partition(THOUGHT_OPEN)
        thought, closed, after = rest.partition(THOUGHT_CLOSE)
        reasoning = re.sub(r"^thought\s*\n?", "", thought).strip()
        text = before + (after if closed else "")
    return reasoning, text.strip()


class PromptTooLong(ReapError):
    """A message or conversation over the length this app allows."""


def check_prompt_length(text: str, max_chars: int | None) -> None:
    """Refuse a message over `max_chars` characters — cheap, so a UI can call it before tokenising."""
    if max_chars is not None and len(text) > max_chars:
        raise PromptTooLong(f"the message is {len(text):,} characters; the limit here is {max_chars:,} — "
                            "shorten the message")


def _check_prompt_tokens(num_tokens: int, max_prompt_tokens: int | None) -> None:
    if max_prompt_tokens is not None and num_tokens > max_prompt_tokens:
        raise PromptTooLong(f"the conversation is {num_tokens:,} tokens; the limit here is {max_prompt_tokens:,} "
                            "— clear the chat or shorten the message")


def build_inputs(loaded: LoadedModel, history: list[dict], image: Any = None, thinking: bool = False, *,
                 max_prompt_tokens: int | None = None) -> dict:
    """Tokenize a conversation (list of {'role', 'content'}) with the checkpoint's own chat template;
    typed control tokens stay text (`chat_format`). Raises PromptTooLong over `max_prompt_tokens`."""
    device = loaded.input_device
    if image is not None and loaded.processor is not None:
        messages = [dict(m) for m in history]
        last = messages[-1]
        last["content"] = [{"type": "image", "image": image}, {"type": "text", "text": last["content"]}]
        enc = dict(encode_chat_with_images(loaded.processor, messages, add_generation_prompt=True,
                                           enable_thinking=thinking))
    else:
        ids = encode_chat(loaded.tokenizer, history, add_generation_prompt=True, enable_thinking=thinking)
        enc = {"input_ids": torch.tensor([ids], dtype=torch.long),
               "attention_mask": torch.ones((1, len(ids)), dtype=torch.long)}
    _check_prompt_tokens(enc["input_ids"].shape[-1], max_prompt_tokens)
    return {k: v.to(device) for k, v in enc.items()}


class _QueueStreamer(BaseStreamer):
    """Sends each new token id of one variant to a shared queue as (variant, token_id)."""

    def __init__(self, variant: int, out: queue.Queue):
        self.variant, self.out, self.prompt_seen = variant, out, False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() first sends the prompt
            self.prompt_seen = True
            return
        for token in value.reshape(-1).tolist():
            self.out.put((self.variant, token))

    def end(self) -> None:
        self.out.put((self.variant, None))


class _StopOnEvent(StoppingCriteria):
    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def stream_variants(loaded: LoadedModel, conversations: list[list[dict]], plans: list[PruningPlan | None],
                    settings: GenerationSettings = GenerationSettings(), image: Any = None,
                    stop: threading.Event | None = None, *,
                    max_prompt_tokens: int | None = None) -> Iterator[list[str]]:
    """Variant i continues conversations[i] under plans[i] (None = original). Yields the raw
    decoded text of every variant after each new token, until all are done. A conversation over
    `max_prompt_tokens` raises PromptTooLong before any generation starts.

    Closing the iterator early (a UI's stop button) stops every generation thread.
    """
    if len(conversations) != len(plans):
        raise ValueError("one conversation per variant")
    inputs = [build_inputs(loaded, c, image=image, thinking=settings.thinking, max_prompt_tokens=max_prompt_tokens)
              for c in conversations]
    stop = stop or threading.Event()
    tokens: queue.Queue = queue.Queue()
    errors: list[BaseException] = []
    gen_kwargs: dict[str, Any] = dict(max_new_tokens=settings.max_new_tokens,
                                      stopping_criteria=StoppingCriteriaList([_StopOnEvent(stop)]),
                                      pad_token_id=loaded.tokenizer.pad_token_id)
    if settings.temperature > 0:
        gen_kwargs.update(do_sample=True, temperature=settings.temperature, top_p=settings.top_p)
    else:
        gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)

    def worker(variant: int, plan: PruningPlan | None) -> None:
        streamer = _QueueStreamer(variant, tokens)
        try:
            with torch.inference_mode(), masked_view(loaded, plan):
                loaded.model.generate(**inputs[variant], streamer=streamer, **gen_kwargs)
        except BaseException as exc:  # surfaced to the caller below
            errors.append(exc)
            streamer.end()

    threads = [threading.Thread(target=worker, args=(i, p), daemon=True) for i, p in enumerate(plans)]
    for t in threads:
        t.start()
    ids: list[list[int]] = [[] for _ in plans]
    running = len(plans)
    try:
        while running:
            variant, token = tokens.get()
            if token is None:
                running -= 1
            else:
                ids[variant].append(token)
            if errors:
                raise errors[0]
            if token is not None and not tokens.empty():
                continue  # batch up queued tokens: fewer UI updates, same result
            yield [loaded.tokenizer.decode(i, skip_special_tokens=False) for i in ids]
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)

