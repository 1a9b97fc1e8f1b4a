"""Held-out data for the fidelity sweep: tokenized sequences that are never calibration samples.

What enters: a held-out spec (toy, gemma4-bench, or any calibration spec), the tokenizer, and the
calibration to keep out (an `Exclusion`). What leaves: a `HeldOut` — token ids per sequence, the
index from which each one is scored, and a record of what was really scored.

Scored tokens: by default only the tokens of the LAST assistant turn of each conversation (its
answer, including the end-of-turn marker): the prompt and the chat-template scaffolding are
predictable and would dilute the difference between the original and a prune. positions="all"
scores every non-padding token after the first. A sequence whose answer cannot be located (raw
text with no assistant turn, no chat template, a template that fails on the prompt) is scored on
all its tokens; the HeldOut counts those sequences and says why, and `describe()` reports
"answer", "all" or "mixed" for what was scored, never the request alone.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from jinja2 import TemplateError

from . import gemma_bench, toy_tasks
from .calibration import CalibrationSet, Sample, load_samples, render_sample
from .chat_format import encode_chat
from .errors import CalibrationError
from .stats import ExpertStats

HELDOUT_SEED = 4321            # toy items: differs from TRAIN (1234), CALIBRATION (5678), EVAL (9999)


def _ids_hash(ids: Sequence[int]) -> str:
    return hashlib.sha1(np.asarray(ids, dtype=np.int64).tobytes()).hexdigest()


@dataclass(frozen=True)
class Exclusion:
    """Token-id fingerprints of calibration samples (truncated as calibration truncated them)."""

    hashes: frozenset[str] = frozenset()
    max_tokens: int = 0
    note: str = ""

    def excludes(self, ids: Sequence[int]) -> bool:
        return bool(self.hashes) and _ids_hash(ids[:self.max_tokens] if self.max_tokens else ids) in self.hashes


def calibration_exclusion(source: CalibrationSet | ExpertStats | None, tokenizer: Any,
                          allow_local_files: bool = True) -> Exclusion:
    """What to keep out of the held-out set. From a CalibrationSet: its exact samples. From
    ExpertStats (e.g. loaded from a file): every sample its calibration spec can give (a superset
    of what was used, since the per-category cap is not recorded); Hub specs are not re-downloaded.
    `allow_local_files=False` (public mode): a spec naming a server file is never read — it comes
    from a statistics file a visitor may have written — only built-in specs are re-read."""
    if source is None:
        return Exclusion(note="no calibration given: nothing excluded")
    if isinstance(source, CalibrationSet):
        return Exclusion(frozenset(_ids_hash(ids) for ids in source.token_ids), source.max_tokens,
                         f"{len(source.token_ids)} calibration samples excluded by token fingerprint")
    spec = str(source.calibration.get("spec", ""))
    max_tokens = int(source.calibration.get("max_tokens") or 0)
    builtin = spec == "builtin" or spec.startswith("builtin:")
    local = builtin or (allow_local_files and spec and Path(spec).expanduser().exists())
    if not local:
        return Exclusion(note=f"calibration '{spec}' is not local: its samples could not be excluded")
    try:
        samples = load_samples(spec)
    except CalibrationError as exc:
        return Exclusion(note=f"calibration '{spec}' could not be re-read ({exc}): nothing excluded")
    hashes = []
    for s in samples:
        ids = render_sample(s, tokenizer)
        hashes.append(_ids_hash(ids[:max_tokens] if max_tokens else ids))
    return Exclusion(frozenset(hashes), max_tokens, f"samples of calibration '{spec}' excluded by token fingerprint")


@dataclass
class HeldOut:
    """Tokenized held-out sequences; targets from index score_from[i] on are scored.

    `positions` is what was asked for; `all_tokens` counts the sequences scored on all their
    tokens although "answer" was asked (their answer could not be located), `fallback_reasons`
    says why ({reason: sequences})."""

    source: str
    token_ids: list[list[int]]
    score_from: list[int]
    categories: list[str]
    positions: str = "answer"
    excluded: int = 0
    note: str = ""
    all_tokens: int = 0
    fallback_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def num_scored(self) -> int:
        return sum(len(ids) - s for ids, s in zip(self.token_ids, self.score_from))

    @property
    def scored_positions(self) -> str:
        """What was really scored: "answer", "all", or "mixed" (answers, and whole sequences)."""
        if self.positions == "all" or self.all_tokens >= len(self.token_ids):
            return "all"
        return "mixed" if self.all_tokens else "answer"

    @property
    def fallback_note(self) -> str:
        if not self.all_tokens:
            return ""
        why = ", ".join(f"{reason} ({n})" for reason, n in self.fallback_reasons.items())
        return (f"{self.all_tokens} of {len(self.token_ids)} sequences scored on all tokens: their answer "
                f"could not be located ({why})")

    def fingerprint(self) -> str:
        h = hashlib.sha256(self.positions.encode())
        for ids, s in zip(self.token_ids, self.score_from):
            h.update(np.asarray([s, *ids], dtype=np.int64).tobytes())
        return h.hexdigest()[:16]

    def describe(self) -> dict:
        return dict(source=self.source, fingerprint=self.fingerprint(), sequences=len(self.token_ids),
                    scored_tokens=self.num_scored, positions=self.scored_positions, positions_requested=self.positions,
                    all_tokens_sequences=self.all_tokens, positions_note=self.fallback_note,
                    excluded=self.excluded, note=self.note)


def _answer_start(sample: Sample, ids: list[int], tokenizer: Any) -> tuple[int, str | None]:
    """(index of the first token of the last assistant turn, None), or (1, why it cannot be found)."""
    msgs = list(sample.messages or ())
    last = max((i for i, m in enumerate(msgs) if m.get("role") == "assistant"), default=None)
    if last is None:
        return 1, "no assistant turn"
    if not getattr(tokenizer, "chat_template", None):
        return 1, "the tokenizer has no chat template"
    try:   # the same rendering as render_sample, so the prompt's ids are a prefix of the conversation's
        prompt = encode_chat(tokenizer, msgs[:last], tools=list(sample.tools) if sample.tools else None,
                             add_generation_prompt=True)
    except (TemplateError, TypeError, KeyError, ValueError, IndexError) as exc:  # jinja's errors on the prompt alone
        return 1, f"the chat template failed on the prompt ({type(exc).__name__})"
    n = 0
    for a, b in zip(prompt, ids):  # common prefix: robust to a merge at the boundary
        if a != b:
            break
        n += 1
    if n <= 1:
        return 1, "the rendered prompt is not a prefix of the conversation"
    return n, None


def _toy_samples(per_domain: int, exclusion: Exclusion, tokenizer: Any) -> tuple[list[Sample], int]:
    samples, dropped = [], 0
    for domain in toy_tasks.TEXT_DOMAINS:   # token sequences: image tasks are measured by vision_eval
        got = 0
        for item in toy_tasks.generate(domain, per_domain * 4, HELDOUT_SEED):
            s = Sample(domain, messages=tuple(toy_tasks.to_messages(item, with_answer=True)), tools=item.tools or None)
            if exclusion.excludes(render_sample(s, tokenizer)):
                dropped += 1
                continue
            samples.append(s)
            got += 1
            if got == per_domain:
                break
    return samples, dropped


def build_heldout(spec: str, tokenizer: Any, exclusion: Exclusion = Exclusion(), max_tokens: int = 256,
                  per_category: int | None = None, positions: str = "answer") -> HeldOut:
    """Held-out sequences from a spec:
      toy[:N]          N (default 8) bundled-model task conversations per domain, seed HELDOUT_SEED
      gemma4-bench     the built-in benchmark items with their worked solutions
      anything else    a calibration spec (builtin:cat, file.jsonl, Hub dataset) used as held-out text
    Samples equal to a calibration sample (see `calibration_exclusion`) are dropped."""
    if positions not in ("answer", "all"):
        raise CalibrationError(f"positions must be 'answer' or 'all', not {positions!r}")
    spec = (spec or "").strip()
    dropped = 0
    if spec == "toy" or spec.startswith("toy:"):
        n = int(spec.partition(":")[2] or per_category or 8)
        samples, dropped = _toy_samples(n, exclusion, tokenizer)
    elif spec == gemma_bench.NAME:
        samples = [Sample(it.domain, messages=tuple(gemma_bench.to_messages(it, with_answer=True)))
                   for it in gemma_bench.items()]
    else:
        samples = load_samples(spec, per_category)
    token_ids, score_from, cats = [], [], []
    fallbacks: Counter[str] = Counter()
    for s in samples:
        ids = render_sample(s, tokenizer)
        if exclusion.excludes(ids):
            dropped += 1
            continue
        start, why = _answer_start(s, ids, tokenizer) if positions == "answer" else (1, None)
        ids = ids[:max_tokens]
        if start >= len(ids):   # truncation cut the whole answer: nothing to score
            continue
        token_ids.append(ids)
        score_from.append(start)
        cats.append(s.category)
        if why:
            fallbacks[why] += 1
    if not token_ids:
        raise CalibrationError(f"held-out source '{spec}' gave no sequences to score"
                               + (f" ({dropped} were calibration samples)" if dropped else ""))
    note = exclusion.note or ("" if exclusion.hashes else "no calibration given: nothing excluded")
    return HeldOut(spec, token_ids, score_from, cats, positions, dropped, note,
                   all_tokens=sum(fallbacks.values()), fallback_reasons=dict(fallbacks))
