"""Stage 2 — calibration data: a source spec in, tokenized samples and padded batches out.

Where samples come from, and what makes a source acceptable, is `calibration_sources` (re-exported
here, so stage 2 has one entry module: `build_calibration`). This module tokenizes: chats through
the tokenizer's own template with typed control tokens kept as text, no packing (each sample stays
its own sequence, so no expert sees a token whose context is another sample), truncation to
`max_tokens`, and right-padded batches whose padding every statistic ignores. Image chats go through
the model's processor (each picture becomes its image tokens, and its pixels ride with the batch).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from .calibration_sources import (BUILTIN_DIR, LOCAL_LIMITS, PUBLIC_LIMITS, ROLES, SERVER_PATHS_REFUSED,  # noqa: F401
                                  TOY_PREFIX, CalibrationLimits, Sample, builtin_categories, load_samples)
from .chat_format import defuse_control_tokens, encode_chat, encode_chat_with_images
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
    pixels: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)  # sample -> its pictures' inputs

    @property
    def num_tokens(self) -> int:
        return sum(len(t) for t in self.token_ids)

    @property
    def num_images(self) -> int:
        return sum(len(p["pixel_values"]) for p in self.pixels.values())

    def fingerprint(self) -> str:
        """Identifies the exact inputs: same fingerprint = same statistics for the same model."""
        h = hashlib.sha256()
        for i, (cat, ids) in enumerate(zip(self.category_ids, self.token_ids)):
            h.update(self.categories[cat].encode())
            h.update(torch.tensor(ids, dtype=torch.int64).numpy().tobytes())
            if i in self.pixels:
                h.update(self.pixels[i]["pixel_values"].float().numpy().tobytes())
        return h.hexdigest()[:16]


@dataclass
class Batch:
    input_ids: torch.Tensor       # [B, T]
    attention_mask: torch.Tensor  # [B, T], 0 = padding
    category_ids: torch.Tensor    # [B]
    sample_ids: torch.Tensor      # [B] index into CalibrationSet.token_ids
    images: dict[str, torch.Tensor] = field(default_factory=dict)   # pixel inputs of the batch's pictures, row order

    def model_inputs(self, device: torch.device | str) -> dict[str, torch.Tensor]:
        """What the model's forward takes: ids, mask and, for image chats, the pictures."""
        return {"input_ids": self.input_ids.to(device), "attention_mask": self.attention_mask.to(device),
                **{k: v.to(device) for k, v in self.images.items()}}


# --- tokenizing -------------------------------------------------------------------------------

def render_sample(sample: Sample, tokenizer: Any) -> list[int]:
    """Token ids of one sample. Chats go through the tokenizer's own chat template, with typed
    control tokens kept as text (`chat_format.encode_chat`, the same path as the chat panes). Only a
    tokenizer with no chat template at all gets the plain "role: content" rendering; a template that
    fails is an error naming the sample, never a silent change of format. (Image chats: `render_image_sample`.)"""
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


def render_image_sample(sample: Sample, processor: Any) -> tuple[list[int], dict[str, torch.Tensor]]:
    """Token ids and picture inputs of an image chat, through the model's processor (the same path
    as an image in the chat panes); a picture that does not open is an error naming the sample."""
    from PIL import Image, UnidentifiedImageError

    where = sample.where or f"a '{sample.category}' sample"
    if processor is None:
        raise CalibrationError(f"{where} has images, but this model takes no images (it has no image processor)")
    messages = []
    for m in sample.messages or ():
        if isinstance(m.get("content"), list):
            parts = []
            for part in m["content"]:
                if part.get("type") == "image":
                    try:
                        with Image.open(part["image"]) as im:
                            part = {**part, "image": im.convert("RGB")}
                    except (OSError, UnidentifiedImageError):
                        raise CalibrationError(f"{where}: {Path(part['image']).name} is not a picture that "
                                               "opens") from None
                parts.append(part)
            m = {**m, "content": parts}
        messages.append(m)
    try:
        enc = encode_chat_with_images(processor, messages)
    except Exception as exc:  # jinja and the processor raise many types
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CalibrationError(f"{where}: the processor could not render it ({reason})") from exc
    pixels = {k: enc[k] for k in ("pixel_values", "image_position_ids") if k in enc}
    return enc["input_ids"][0].tolist(), pixels


def _content_text(message: dict) -> str:
    content = message.get("content") or ""
    if isinstance(content, list):  # content parts: keep the text
        content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    if message.get("tool_calls"):
        content += " " + json.dumps(message["tool_calls"])
    return content


def tokenize_samples(samples: list[Sample], tokenizer: Any, max_tokens: int = 512, spec: str = "",
                     processor: Any = None) -> CalibrationSet:
    if max_tokens < 2:
        raise CalibrationError("max tokens per sample must be at least 2")
    categories: list[str] = []
    token_ids, category_ids, truncated = [], [], 0
    pixels: dict[int, dict[str, torch.Tensor]] = {}
    for s in samples:
        if s.images:
            ids, inputs = render_image_sample(s, processor)
            if len(ids) > max_tokens:   # cutting through an image's tokens would leave pixels without a place
                raise CalibrationError(f"{s.where or 'an image sample'} is {len(ids):,} tokens with its images; "
                                       f"raise max tokens per sample above {max_tokens:,} or shorten it")
            pixels[len(token_ids)] = inputs
        else:
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
    for i, (cat, ids) in enumerate(zip(category_ids, token_ids)):
        entry = summary[categories[cat]]
        entry["samples"] += 1
        entry["tokens"] += len(ids)
        if i in pixels:
            entry["images"] = entry.get("images", 0) + len(pixels[i]["pixel_values"])
    return CalibrationSet(spec=spec, token_ids=token_ids, category_ids=category_ids, categories=categories,
                          truncated=truncated, max_tokens=max_tokens, summary=summary, pixels=pixels)


def build_calibration(spec: str, tokenizer: Any, max_tokens: int = 512, samples_per_category: int | None = None,
                      *, limits: CalibrationLimits | None = None, allow_local_files: bool = True,
                      processor: Any = None) -> CalibrationSet:
    """The one entry point the CLI and the app use (see `load_samples` for the keywords); `processor`:
    the model's, for image chats."""
    samples = load_samples(spec, samples_per_category, limits=limits, allow_local_files=allow_local_files)
    return tokenize_samples(samples, tokenizer, max_tokens, spec=spec, processor=processor)


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
        with_images = [calib.pixels[i] for i in ids if i in calib.pixels]
        images = {k: torch.cat([p[k] for p in with_images]) for k in with_images[0]} if with_images else {}
        yield Batch(input_ids, mask, torch.tensor([calib.category_ids[i] for i in ids]), torch.tensor(ids), images)
