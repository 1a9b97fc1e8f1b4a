"""Chat with one model object as several variants at once (original, pruned, ...), streaming.

All variants generate in ONE batched `generate` call: row i of the batch is conversation i,
left padded, under plans[i] by a per-row router mask (`masking.masked_rows`). The panes share
one copy of the weights, never see each other's mask, and a step of the batch costs far less than
two steps (benchmarks/chat_throughput.py). Greedy rows equal each variant generated alone, token for
token. The generation runs in one worker thread; its new tokens arrive on a queue and the caller
gets the full decoded text of every variant after each step.

The prompt is tokenised by `chat_format` (typed control tokens stay text) and can be capped in
tokens (`max_prompt_tokens`) and, before any tokenising, in characters (`check_prompt_length`),
so one visitor's 100,000-character message cannot hold the shared queue for a minute.

Reasoning comes before the answer between each family's own markers (its adapter's
`thinking_markers`: Gemma 4 `<|channel>thought … <channel|>`, Qwen3 / GLM / MiniMax / DeepSeek
`<think> … </think>`, gpt-oss the harmony analysis channel); it is split off so a UI can fold it
away, and the answer is what is kept in the conversation.
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
from .merging import compressed_rows
from .model import LoadedModel
from .plan import PruningPlan

# generic ends of a turn; each family adds its own (adapter.layout.end_of_turn_markers)
_END_MARKERS = ("<eos>", "</s>", "<|endoftext|>")


def _family_markers() -> tuple[list[tuple[str, str]], list[str], list[str]]:
    """(thinking (open, close) pairs, end-of-turn markers, answer-channel headers) of every family."""
    from .adapters import ADAPTERS

    layouts = [a.layout for a in ADAPTERS.values()]
    thinking = sorted({lay.thinking_markers for lay in layouts if lay.thinking_markers}, key=lambda m: -len(m[0]))
    ends = list(_END_MARKERS) + sorted({m for lay in layouts for m in lay.end_of_turn_markers})
    answers = sorted({lay.answer_marker for lay in layouts if lay.answer_marker})
    return thinking, ends, answers


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 200
    temperature: float = 0.0        # 0 = greedy (reproducible: both panes comparable token by token)
    top_p: float = 0.95
    thinking: bool = False


def split_reasoning(text: str) -> tuple[str, str]:
    """(reasoning, answer) of a raw model output, in any supported family's markup; reasoning is ''
    when there is none. A reasoning block that never closed leaves no answer."""
    thinking, ends, answers = _family_markers()
    reasoning = ""
    for open_, close in thinking:
        if open_ in text:
            before, _, rest = text.partition(open_)
            thought, closed, after = rest.partition(close)
            reasoning = re.sub(r"^thought\s*\n?", "", thought).strip()   # Gemma 4 names its channel "thought"
            text = before + (after if closed else "")
            break
        if close in text:     # the template opened the block in the prompt (Qwen3-Thinking, DeepSeek-R1)
            thought, _, text = text.partition(close)
            reasoning = thought.strip()
            break
    for header in answers:            # gpt-oss: the answer follows its "final" channel header
        if header in text:
            text = text.split(header, 1)[1]
    for end in ends:                  # whatever follows the end of the turn is not the answer
        text = text.split(end)[0]
    text = text.replace("<bos>", "").replace("<pad>", "")
    return reasoning, text.strip()


def reasoning_unfinished(text: str) -> bool:
    """A reasoning block opened and never closed: the token budget ran out before an answer."""
    return any(open_ in text and close not in text.partition(open_)[2] for open_, close in _family_markers()[0])


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
    """Sends each step's new token ids of a batch ([B]) to a queue. generate() first sends the prompt;
    a finished row keeps receiving padding, so each row stops at its own first end token."""

    def __init__(self, out: queue.Queue, end_ids: set[int]):
        self.out, self.end_ids, self.prompt_seen, self.done = out, end_ids, False, None

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        step = value.reshape(-1).tolist()
        if self.done is None:
            self.done = [False] * len(step)
        new = []
        for row, token in enumerate(step):
            if self.done[row]:
                continue
            new.append((row, token))
            self.done[row] = token in self.end_ids
        self.out.put(new)

    def end(self) -> None:
        self.out.put(None)


def left_pad_batch(encodings: list[dict], pad_id: int) -> dict:
    """One batch from single-row encodings: per-token tensors ([1, T]: ids, attention mask, token
    types) left padded to the longest (ids with pad_id, the rest with 0); anything else (pixel
    values of the images) concatenated along its first axis."""
    lengths = [e["input_ids"].shape[-1] for e in encodings]
    longest = max(lengths)
    batch = {}
    for key in encodings[0]:
        parts = []
        for enc, n in zip(encodings, lengths):
            t = enc[key]
            if t.dim() >= 2 and t.shape[0] == 1 and t.shape[1] == n:
                fill = pad_id if key == "input_ids" else 0
                t = torch.cat([t.new_full((1, longest - n, *t.shape[2:]), fill), t], dim=1)
            parts.append(t)
        batch[key] = torch.cat(parts, dim=0)
    return batch


def end_token_ids(model, tokenizer) -> set[int]:
    """The ids that end a model's turn: its generation config's, else the tokenizer's eos."""
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
    return ids or ({tokenizer.eos_token_id} - {None})


class _StopOnEvent(StoppingCriteria):
    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def stream_variants(loaded: LoadedModel, conversations: list[list[dict]], plans: list[PruningPlan | None],
                    settings: GenerationSettings = GenerationSettings(), image: Any = None,
                    stop: threading.Event | None = None, *,
                    max_prompt_tokens: int | None = None) -> Iterator[list[str]]:
    """Variant i continues conversations[i] under plans[i] (None = original), all in one batch.
    Yields the raw decoded text of every variant after each generation step, until all are done. A
    conversation over `max_prompt_tokens` raises PromptTooLong before any generation starts.

    Closing the iterator early (a UI's stop button) stops the generation.
    """
    if len(conversations) != len(plans):
        raise ValueError("one conversation per variant")
    encodings = [build_inputs(loaded, c, image=image, thinking=settings.thinking, max_prompt_tokens=max_prompt_tokens)
                 for c in conversations]                       # refuses a long conversation before any work
    end_ids = end_token_ids(loaded.model, loaded.tokenizer)
    pad_id = loaded.tokenizer.pad_token_id
    pad_id = min(end_ids) if pad_id is None else pad_id
    batch = left_pad_batch(encodings, pad_id)
    stop = stop or threading.Event()
    steps: queue.Queue = queue.Queue()
    errors: list[BaseException] = []
    gen_kwargs: dict[str, Any] = dict(max_new_tokens=settings.max_new_tokens, pad_token_id=pad_id,
                                      eos_token_id=sorted(end_ids),
                                      stopping_criteria=StoppingCriteriaList([_StopOnEvent(stop)]))
    if settings.temperature > 0:
        gen_kwargs.update(do_sample=True, temperature=settings.temperature, top_p=settings.top_p)
    else:
        gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    streamer = _QueueStreamer(steps, end_ids)

    def worker() -> None:
        try:
            with torch.inference_mode(), compressed_rows(loaded, plans):
                loaded.model.generate(**batch, streamer=streamer, **gen_kwargs)
        except BaseException as exc:  # surfaced to the caller below
            errors.append(exc)
            streamer.end()

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    ids: list[list[int]] = [[] for _ in plans]
    texts = lambda: [loaded.tokenizer.decode(i, skip_special_tokens=False) for i in ids]  # noqa: E731
    unsent, sent_any = False, False
    try:
        while (step := steps.get()) is not None:
            for row, token in step:
                ids[row].append(token)
            unsent = True
            if steps.empty():  # else batch up queued steps: fewer UI updates, same result
                yield texts()
                unsent, sent_any = False, True
        if errors:
            raise errors[0]
        if unsent or not sent_any:
            yield texts()
    finally:
        stop.set()
        thread.join(timeout=30)
