"""Stage 2 — calibration data: a source spec in, tokenized samples and padded batches out.

One spec language shared by the CLI and the app:
  builtin                      the general built-in set (assets/calibration/*.jsonl, not toy-*)
  builtin:cat1,cat2,toy-*      chosen built-in categories (shell-style patterns allowed)
  path/to/file.jsonl           {"text": ...} or {"messages": [...]} per line, optional "category"
  path/to/file.txt             one sample per blank-line-separated block
  name[subset](split):N,...    Hub datasets, loaded with `datasets` when the network allows

Each sample stays its own sequence (no packing across samples, so no expert sees a token whose
context is another sample) and is truncated to `max_tokens`. Batches are right-padded; padding
is marked in `attention_mask` and every statistic ignores it.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from .errors import CalibrationError
from .model import ASSETS_DIR

BUILTIN_DIR = ASSETS_DIR / "calibration"
TOY_PREFIX = "toy-"
_HUB_ITEM = re.compile(r"^(?P<name>[\w.\-]+(?:/[\w.\-]+)?)(?:\[(?P<subset>[^\]]+)\])?"
                       r"(?:\((?P<split>[^)]+)\))?(?::(?P<n>\d+))?$")


@dataclass(frozen=True)
class Sample:
    category: str
    text: str | None = None                   # raw text sample
    messages: tuple[dict, ...] | None = None  # chat sample, rendered with the tokenizer's template
    tools: tuple[dict, ...] | None = None     # tool schemas for tool-calling chats


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


# --- sources ----------------------------------------------------------------------------------

def builtin_categories(include_toy: bool = True) -> list[str]:
    names = sorted(p.stem for p in BUILTIN_DIR.glob("*.jsonl"))
    return [n for n in names if include_toy or not n.startswith(TOY_PREFIX)]


def _parse_jsonl(path: Path, default_category: str) -> list[Sample]:
    samples = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CalibrationError(f"{path.name} line {lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise CalibrationError(f"{path.name} line {lineno}: expected an object with 'text' or 'messages'")
        samples.append(_sample_from_record(obj, default_category, f"{path.name} line {lineno}"))
    return samples


def _sample_from_record(obj: dict, default_category: str, where: str) -> Sample:
    category = str(obj.get("category") or default_category)
    if isinstance(obj.get("messages"), list) and obj["messages"]:
        messages = obj["messages"]
        for m in messages:
            if not isinstance(m, dict) or "role" not in m:
                raise CalibrationError(f"{where}: each message needs a 'role' and 'content'")
        tools = obj.get("tools")
        return Sample(category, messages=tuple(messages), tools=tuple(tools) if tools else None)
    if isinstance(obj.get("text"), str) and obj["text"].strip():
        return Sample(category, text=obj["text"])
    raise CalibrationError(f"{where}: needs a non-empty 'text' string or a 'messages' list")


def _load_local(path: Path) -> list[Sample]:
    if not path.is_file():
        raise CalibrationError(f"calibration file not found: {path}")
    if path.suffix == ".jsonl":
        samples = _parse_jsonl(path, path.stem)
    elif path.suffix == ".txt":
        blocks = re.split(r"\n\s*\n", path.read_text(encoding="utf-8", errors="replace"))
        samples = [Sample(path.stem, text=b.strip()) for b in blocks if b.strip()]
    else:
        raise CalibrationError(f"unsupported calibration file type '{path.suffix}': use .jsonl or .txt")
    if not samples:
        raise CalibrationError(f"calibration file {path.name} holds no samples")
    return samples


def _load_builtin(selection: str) -> list[Sample]:
    available = builtin_categories()
    if not available:
        raise CalibrationError(f"no built-in calibration data found in {BUILTIN_DIR}")
    if not selection:
        chosen = [c for c in available if not c.startswith(TOY_PREFIX)]
    else:
        chosen = []
        for pattern in (p.strip() for p in selection.split(",") if p.strip()):
            hits = fnmatch.filter(available, pattern)
            if not hits:
                raise CalibrationError(f"unknown built-in category '{pattern}'; available: {', '.join(available)}")
            chosen += [h for h in hits if h not in chosen]
    samples = []
    for name in chosen:
        samples += _parse_jsonl(BUILTIN_DIR / f"{name}.jsonl", name)
    return samples


def _load_hub(spec: str) -> list[Sample]:
    try:
        import datasets
    except ImportError:
        raise CalibrationError("Hub datasets need the 'datasets' package: pip install datasets") from None
    samples: list[Sample] = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        m = _HUB_ITEM.match(item)
        if not m:
            raise CalibrationError(f"cannot read dataset spec '{item}': expected name[subset](split):N")
        name, subset, split, n = m["name"], m["subset"], m["split"] or "train", int(m["n"] or 64)
        try:
            ds = datasets.load_dataset(name, subset, split=split, streaming=True)
            rows = [row for _, row in zip(range(n), ds)]
        except Exception as exc:
            raise CalibrationError(f"could not load Hub dataset '{item}' (offline, or no such dataset/split): "
                                   f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        category = name.split("/")[-1] + (f"-{subset}" if subset else "")
        for i, row in enumerate(rows):
            samples.append(_sample_from_hub_row(row, category, f"{item} row {i}"))
    return samples


def _sample_from_hub_row(row: dict, category: str, where: str) -> Sample:
    for key in ("messages", "conversations", "conversation"):
        turns = row.get(key)
        if isinstance(turns, list) and turns and isinstance(turns[0], dict):
            roles = {"human": "user", "gpt": "assistant", "system": "system"}
            messages = [{"role": roles.get(t.get("role") or t.get("from"), t.get("role") or t.get("from")),
                         "content": t.get("content", t.get("value", ""))} for t in turns]
            return Sample(category, messages=tuple(messages))
    for key in ("text", "content", "prompt"):
        if isinstance(row.get(key), str) and row[key].strip():
            return Sample(category, text=row[key])
    raise CalibrationError(f"{where}: no 'messages' or 'text' column (columns: {', '.join(row)})")


def load_samples(spec: str, samples_per_category: int | None = None) -> list[Sample]:
    """Samples from a spec, at most `samples_per_category` of each category, in file order."""
    spec = (spec or "").strip()
    if not spec:
        raise CalibrationError("empty calibration spec: use 'builtin', a .jsonl/.txt file, or name[subset](split):N")
    if spec == "builtin" or spec.startswith("builtin:"):
        samples = _load_builtin(spec.partition(":")[2])
    elif spec.endswith((".jsonl", ".txt", ".json")) or Path(spec).expanduser().exists():
        samples = _load_local(Path(spec).expanduser())
    else:
        samples = _load_hub(spec)
    if samples_per_category is not None:
        if samples_per_category < 1:
            raise CalibrationError("samples per category must be at least 1")
        seen: dict[str, int] = {}
        kept = []
        for s in samples:
            if seen.get(s.category, 0) < samples_per_category:
                seen[s.category] = seen.get(s.category, 0) + 1
                kept.append(s)
        samples = kept
    if not samples:
        raise CalibrationError(f"calibration spec '{spec}' gave no samples")
    return samples


# --- tokenizing -------------------------------------------------------------------------------

def render_sample(sample: Sample, tokenizer: Any) -> list[int]:
    """Token ids of one sample; chats go through the tokenizer's own chat template."""
    if sample.text is not None:
        return tokenizer(sample.text, add_special_tokens=True)["input_ids"]
    messages = list(sample.messages or ())
    if getattr(tokenizer, "chat_template", None):
        try:
            text = tokenizer.apply_chat_template(messages, tools=list(sample.tools) if sample.tools else None,
                                                 tokenize=False)
            return tokenizer(text, add_special_tokens=False)["input_ids"]
        except Exception:
            pass  # a template that cannot render tool turns: fall back to plain text below
    text = "\n\n".join(f"{m['role']}: {_content_text(m)}" for m in messages)
    return tokenizer(text, add_special_tokens=True)["input_ids"]


def _content_text(message: dict) -> str:
    content = message.get("content") or ""
    if isinstance(content, list):  # multimodal content parts: keep the text parts
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


def build_calibration(spec: str, tokenizer: Any, max_tokens: int = 512,
                      samples_per_category: int | None = None) -> CalibrationSet:
    """The one entry point the CLI and the app use."""
    return tokenize_samples(load_samples(spec, samples_per_category), tokenizer, max_tokens, spec=spec)


def iter_batches(calib: CalibrationSet, batch_size: int, pad_id: int) -> Iterator[Batch]:
    """Right-padded batches of similar-length samples (sorted, so little compute goes to padding)."""
    if batch_size < 1:
        raise CalibrationError("batch size must be at least 1")
    order = sorted(range(len(calib.token_ids)), key=lambda i: -len(calib.token_ids[i]))
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
