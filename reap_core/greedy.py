"""Greedy answers to chat conversations: the ONE generation function every evaluation uses.

What enters: a causal LM, its tokenizer (with a chat template), conversations (lists of
{"role", "content"} without the answer), a token budget. What leaves: one `GreedyAnswer` per
conversation — the raw decoded text with special tokens kept, and whether the budget stopped it.

Task accuracy (task_eval.py) and generation quality (generation_quality.py) both call this, so
the original's answers are the same whichever report asks for them (they once came from two
functions that decoded and batched differently, and the same model scored differently).

Generation runs batched in the calling thread, never in worker threads: the pruned view of a model
is a router mask held in a contextvar of the calling thread (masking.py), and generation must see
the caller's mask. Prompts go through the tokenizer's own chat template with the generation prompt,
sorted by length so a batch pads little, left padded, greedy. Greedy decoding of the same prompts
in the same batches is deterministic, so equal settings give equal answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .chat import end_token_ids, reasoning_unfinished, split_reasoning
from .chat_format import images_in

Progress = Callable[[int, int], None]   # (done, total)


@dataclass(frozen=True)
class GreedyAnswer:
    raw: str              # decoded with special tokens kept (reasoning channel, end-of-turn marker)
    hit_limit: bool       # stopped by max_new_tokens, not by an end-of-turn token

    @property
    def text(self) -> str:
        """The answer a checker grades: after the reasoning channel, before the end of the turn."""
        return split_reasoning(self.raw)[1]

    @property
    def unfinished(self) -> bool:
        """The reasoning channel opened and never closed: the budget ran out before an answer."""
        return reasoning_unfinished(self.raw)


@torch.inference_mode()
def generate_greedy(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int, batch_size: int = 8,
                    thinking: bool = False, progress: Progress | None = None, *,
                    tools: list[list[dict] | None] | None = None, processor=None) -> list[GreedyAnswer]:
    """Greedy answers, in the order of `conversations`; progress(done, total) after each batch.
    `tools[i]`: the tools declared to conversation i. Conversations with images (content parts
    {"type": "image", "image": PIL image}) go through `processor`, in batches of their own."""
    tools = tools or [None] * len(conversations)
    with_image = [bool(images_in(c)) for c in conversations]
    if any(with_image) and processor is None:
        raise ValueError("conversations with images need the model's processor")
    render = lambda i: (processor if with_image[i] else tokenizer).apply_chat_template(  # noqa: E731
        conversations[i], tools=tools[i], add_generation_prompt=True, tokenize=False, enable_thinking=thinking)
    prompts = [render(i) for i in range(len(conversations))]
    order = sorted(range(len(prompts)), key=lambda i: (with_image[i], len(prompts[i])))
    eos_ids = end_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids)
    pad_text = tokenizer.decode([pad], skip_special_tokens=False) if tokenizer.pad_token_id is not None else None
    device = model.get_input_embeddings().weight.device
    out: list[GreedyAnswer] = [GreedyAnswer("", False)] * len(prompts)
    batches = [order[b:b + batch_size] for b in range(0, len(order), batch_size)]
    batches = [[i for i in b if not with_image[i]] for b in batches] + [[i for i in b if with_image[i]] for b in batches]
    old_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    was_training = model.training
    model.eval()
    done = 0
    try:
        for idx in (b for b in batches if b):
            # The template already starts with <bos>: no extra special tokens.
            if with_image[idx[0]]:
                enc = processor(text=[prompts[i] for i in idx], images=[images_in(conversations[i]) for i in idx],
                                return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            else:
                enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True,
                                add_special_tokens=False).to(device)
            gen = model.generate(**enc, do_sample=False, temperature=None, top_p=None, top_k=None,
                                 max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=list(eos_ids))
            for i, row in zip(idx, gen[:, enc["input_ids"].shape[1]:].tolist()):
                stopped = any(t in eos_ids for t in row)
                text = tokenizer.decode(row, skip_special_tokens=False)
                if pad_text:
                    text = text.replace(pad_text, "")
                out[i] = GreedyAnswer(text, not stopped and len(row) >= max_new_tokens)
            done += len(idx)
            if progress:
                progress(done, len(order))
    finally:
        tokenizer.padding_side = old_side
        model.train(was_training)
    return out
