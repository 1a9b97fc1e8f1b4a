"""Stage 2 — calibration data: a source spec in, tokenized samples and padded batches out.

Where samples come from, and what makes a source acceptable, is `calibration_sources` (re-exported
here, so stage 2 has one entry module: `build_calibration`). This module tokenizes: chats through
the tokenizer's own template with typed control tokens kept as text, no packing (each sample stays
its own sequence, so no expert sees a token whose context is another sample), truncation to
`max_tokens`, and right-padded batches whose padding every statistic ignores.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from .calibration_sources import (BUILTIN_DIR, LOCAL_LIMITS, PUBLIC_LIMITS, ROLES, SERVER_PATHS_REFUSED,  # noqa: F401
                                  TOY_PREFIX, CalibrationLimits, Sample, builtin_categories, load_samples)
from .chat_format import defuse_control_tokens, encode_chat
from .errors import CalibrationError


@dataclass
class CalibrationSet:
    """Tokenized samples. `token_ids[i]` is sample i, `categories[category_ids[i]]` its category."""

    spec: str
    token_ids: list[list[int]]
    category_ids: list[int]
    categories: list[str]
    truncated: int = 0
    max_tokens: int = 0
    summary: dict = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return sum(len(t) for t in self.token_ids)

    def fingerprint(self) -> str:
        """Identifies the exact tokens: same fingerprint = same statistics for the same model."""
        h = hashlib.sha256()
        for cat, ids in zip(self.category_ids, self.token_ids):
            h.update(self.categories[cat].encode())
            h.update(torch.tensor(ids, dtype=torch.int64).numpy().tobytes())
        return h.hexdigest()[:16]


@dataclass
class Batch:
    input_ids: torch.Tensor       # [B, T]
    attention_mask: torch.Tensor  # [B, T], 0 = padding
    category_ids: torch.Tensor    # [B]
    sample_ids: torch.Tensor      # [B] index into CalibrationSet.token_ids


# --- tokenizing -------------------------------------------------------------------------------

def render_sample(sample: Sample, tokenizer: Any) -> list[int]:
    """Token ids of one sample. Chats go through the tokenizer's own chat template, with typed
    control tokens kept as text (`chat_format.encode_chat`, the same path as the chat panes). Only a
    tokenizer with no chat template at all gets the plain "role: content" rendering; a template that
    fails is an error naming the sample, never a silent change of format."""
    if sample.text is not None:
        return tokenizer(sample.text, add_special_tokens=True)["input_ids"]
    messages = list(sample.messages or ())
    if not getattr(tokenizer, "chat_template", None):
        text = "\n\n".join(f"{m['role']}: {_content_text(m)}" for m in messages)
        return tokenizer(defuse_control_tokens(text, tokenizer), add_special_tokens=True)["input_ids"]
    try:
        return encode_chat(tokenizer, messages, tools=list(sample.tools) if sample.tools else None)
    except Exception as exc:  # jinja raises many types: TemplateError, TypeError, KeyError, ...
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        where = sample.where or f"a '{sample.category}' sample"
        raise CalibrationError(f"{where}: the chat template could not render it ({reason})") from exc


def _content_text(message: dict) -> str:
    content = message.get("content") or ""
    if isinstance(content, list):  # content parts: keep the text
        content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    if message.get("tool_calls"):
        content += " " + json.dumps(message["tool_calls"])
    return content


def tokenize_samples(samples: list[Sample], tokenizer: Any, max_tokens: int = 512, spec: str = "") -> CalibrationSet:
    if max_tokens < 2:
        raise CalibrationError("max tokens per sample must be at least 2")
    categories: list[str] = []
    token_ids, category_ids, truncated = [], [], 0
    for s in samples:
        ids = render_sample(s, tokenizer)
        if not ids:
            continue
        if len(ids) > max_tokens:
            ids, truncated = ids[:max_tokens], truncated + 1
        if s.category not in categories:
            categories.append(s.category)
        token_ids.append(list(ids))
        category_ids.append(categories.index(s.category))
    if not token_ids:
        raise CalibrationError("every calibration sample tokenized to nothing")
    summary = {c: {"samples": 0, "tokens": 0} for c in categories}
    for cat, ids in zip(category_ids, token_ids):
        summary[categories[cat]]["samples"] += 1
        summary[categories[cat]]["tokens"] += len(ids)
    return CalibrationSet(spec=spec, token_ids=token_ids, category_ids=category_ids, categories=categories,
                          truncated=truncated, max_tokens=max_tokens, summary=summary)


def build_calibration(spec: str, tokenizer: Any, max_tokens: int = 512, samples_per_category: int | None = None,
                      *, limits: CalibrationLimits | None = None, allow_local_files: bool = True) -> CalibrationSet:
    """The one entry point the CLI and the app use (see `load_samples` for the keywords)."""
    samples = load_samples(spec, samples_per_category, limits=limits, allow_local_files=allow_local_files)
    return tokenize_samples(samples, tokenizer, max_tokens, spec=spec)


def iter_batches(calib: CalibrationSet, batch_size: int, pad_id: int,
                 only: list[int] | None = None) -> Iterator[Batch]:
    """Right-padded batches of similar-length samples (sorted, so little compute goes to padding);
    `only`: these sample indices (a shard), all by default."""
    if batch_size < 1:
        raise CalibrationError("batch size must be at least 1")
    chosen = range(len(calib.token_ids)) if only is None else only
    order = sorted(chosen, key=lambda i: -len(calib.token_ids[i]))
    for start in range(0, len(order), batch_size):
        ids = order[start:start + batch_size]
        width = max(len(calib.token_ids[i]) for i in ids)
        input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, i in enumerate(ids):
            seq = calib.token_ids[i]
            input_ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, :len(seq)] = 1
        yield Batch(input_ids, mask, torch.tensor([calib.category_ids[i] for i in ids]), torch.tensor(ids))
