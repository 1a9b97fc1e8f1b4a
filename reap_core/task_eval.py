"""Task evaluation: greedy answers to held-out items, checked exactly, accuracy per domain.

What enters: a causal LM, its tokenizer (with a chat template), a suite name ("toy") and a count
of items per domain. What leaves: a `SuiteResult` with (correct, total) per domain.

Generation runs batched in the calling thread (no worker threads), because the pruned view of a
model is a router mask held in a contextvar of the calling thread: eval must see the same mask
as the caller. Prompts go through the tokenizer's own chat template with the generation prompt,
left padded, greedy; the decoded assistant text is handed to the suite's checker.

CLI (wired by the engine): python -m reap_core eval --model assets/toy-gemma4-moe --suite toy
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from reap_core import toy_tasks


@dataclass(frozen=True)
class Suite:
    """A named set of domains: how to draw items and how to check an answer."""

    name: str
    domains: tuple[str, ...]
    generate: Callable[[str, int, int], list]  # (domain, n, seed) -> items with .prompt
    check: Callable[[str, object, str], bool]  # (domain, item, answer) -> correct?
    to_messages: Callable[[object], list[dict]]  # item -> chat messages without the answer
    default_seed: int
    max_new_tokens: int  # longest reference answer of the suite plus margin


SUITES: dict[str, Suite] = {
    "toy": Suite(
        name="toy",
        domains=toy_tasks.DOMAINS,
        generate=toy_tasks.generate,
        check=toy_tasks.check,
        to_messages=lambda item: toy_tasks.to_messages(item, with_answer=False),
        default_seed=toy_tasks.EVAL_SEED,
        max_new_tokens=80,
    ),
}


@dataclass
class SuiteResult:
    suite: str
    per_domain: dict[str, tuple[int, int]]  # domain -> (correct, total)
    seed: int = 0
    # A few (prompt, answer, correct) triples per domain, for the UI and for debugging.
    examples: dict[str, list[tuple[str, str, bool]]] = field(default_factory=dict)

    @property
    def mean_accuracy(self) -> float:
        """Unweighted mean over domains (each domain counts the same)."""
        accs = [c / t for c, t in self.per_domain.values() if t]
        return sum(accs) / len(accs) if accs else 0.0

    def accuracy(self, domain: str) -> float:
        correct, total = self.per_domain[domain]
        return correct / total if total else 0.0

    def to_dict(self) -> dict:
        return {
            "suite": self.suite,
            "seed": self.seed,
            "per_domain": {d: {"correct": c, "total": t, "accuracy": c / t if t else 0.0}
                           for d, (c, t) in self.per_domain.items()},
            "mean_accuracy": self.mean_accuracy,
        }

    def format_table(self) -> str:
        width = max([len(d) for d in self.per_domain] + [len("mean")])
        lines = [f"{'domain':<{width}}  correct  accuracy"]
        for d, (c, t) in self.per_domain.items():
            lines.append(f"{d:<{width}}  {c:>3}/{t:<3}  {c / t if t else 0.0:8.1%}")
        lines.append(f"{'mean':<{width}}  {'':7}  {self.mean_accuracy:8.1%}")
        return "\n".join(lines)


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        from . import gemma_bench  # registered lazily: it reads its items from assets/eval
        gemma_bench.register_suite()
    if name not in SUITES:
        raise ValueError(f"unknown eval suite {name!r}; valid suites: {', '.join(sorted(SUITES))}")
    return SUITES[name]


@torch.no_grad()
def generate_answers(model, tokenizer, conversations: list[list[dict]], max_new_tokens: int,
                     batch_size: int = 16, progress: Callable[[int, int], None] | None = None,
                     ) -> list[str]:
    """Greedy assistant answers (decoded text, special tokens dropped), one per conversation."""
    prompts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
               for c in conversations]
    # Sort by length so a batch pads little; restore the order at the end.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers: list[str] = [""] * len(prompts)
    old_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    was_training = model.training
    model.eval()
    eos = model.generation_config.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (
        eos[0] if isinstance(eos, list) else eos)
    device = next(model.parameters()).device
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start: start + batch_size]
            # The template already starts with <bos>: no extra special tokens.
            enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(device)
            out = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens,
                                 pad_token_id=pad, eos_token_id=eos)
            new = out[:, enc["input_ids"].shape[1]:]
            for i, row in zip(idx, new):
                answers[i] = tokenizer.decode(row, skip_special_tokens=True)
            if progress is not None:
                progress(min(start + batch_size, len(order)), len(order))
    finally:
        tokenizer.padding_side = old_side
        model.train(was_training)
    return answers


def run_suite(model, tokenizer, suite: str = "toy", items_per_domain: int = 40,
              seed: int = toy_tasks.EVAL_SEED, max_new_tokens: int | None = None,
              batch_size: int = 16, progress: Callable[[int, int], None] | None = None,
              ) -> SuiteResult:
    """Accuracy per domain of greedy answers on `items_per_domain` held-out items per domain.

    The eval seed differs from the training and calibration seeds (see toy_tasks). `progress`,
    if given, is called with (items done, items total) after each batch.
    """
    s = get_suite(suite)
    items = [(d, it) for d in s.domains for it in s.generate(d, items_per_domain, seed)]
    answers = generate_answers(model, tokenizer, [s.to_messages(it) for _, it in items],
                               max_new_tokens or s.max_new_tokens, batch_size, progress)
    per_domain = {d: (0, 0) for d in s.domains}
    examples: dict[str, list[tuple[str, str, bool]]] = {d: [] for d in s.domains}
    for (d, it), ans in zip(items, answers):
        ok = s.check(d, it, ans)
        c, t = per_domain[d]
        per_domain[d] = (c + int(ok), t + 1)
        if len(examples[d]) < 3:
            examples[d].append((it.prompt, ans, ok))
    return SuiteResult(suite=s.name, per_domain=per_domain, seed=seed, examples=examples)
