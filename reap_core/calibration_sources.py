"""Stage 2a — calibration sources: a spec in, validated `Sample`s out (no tokenizer involved).

One spec language shared by the CLI and the app:
  builtin                      the general built-in set (assets/calibration/*.jsonl, not toy-*)
  builtin:cat1,cat2,toy-*      chosen built-in categories (shell-style patterns allowed)
  path/to/file.jsonl           {"text": ...} or {"messages": [...]} per line, optional "category";
                               a message's content parts may hold {"type": "image", "image": "pic.png"},
                               a picture in the file's own folder (or below it)
  path/to/file.txt             one sample per blank-line-separated block
  name[subset](split):N,...    Hub datasets, loaded with `datasets` when the network allows

What a source may hold is capped (`CalibrationLimits`: file size, checked before reading;
samples; characters per sample) — generous locally, tight on a public Space, where one visitor's
upload must not hold gigabytes of memory or the shared queue. With `allow_local_files=False` (the
typed box of a public app) nothing but `builtin…` and Hub ids is accepted, and no server path is
ever probed. Every malformed input is a CalibrationError naming the file and line.
"""

from __future__ import annotations

import codecs
import fnmatch
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .chat_format import images_in
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
    where: str = field(default="", compare=False)  # "file.jsonl line 3", for error messages

    @property
    def images(self) -> list[str]:
        """The picture files of an image chat sample, in order (their parts hold resolved paths)."""
        return images_in(self.messages or ())


# --- limits -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class CalibrationLimits:
    """How much one calibration source may hold. Everything is tokenised and kept in memory, so on
    a shared machine these bound what one visitor can take from the others."""

    max_file_bytes: int
    max_samples: int
    max_chars_per_sample: int


LOCAL_LIMITS = CalibrationLimits(max_file_bytes=2_000_000_000, max_samples=100_000, max_chars_per_sample=1_000_000)
PUBLIC_LIMITS = CalibrationLimits(max_file_bytes=20_000_000, max_samples=2_000, max_chars_per_sample=50_000)


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{n} bytes"


def _num_chars(obj: Any) -> int:
    """Characters of text in a sample: every string in its text, messages and tools."""
    if isinstance(obj, str):
        return len(obj)
    if isinstance(obj, dict):
        return sum(_num_chars(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_num_chars(v) for v in obj)
    return 0


def _admit(samples: list[Sample], sample: Sample, limits: CalibrationLimits, source: str) -> None:
    """Append `sample`, refusing (never truncating) one over the character limit, and stopping
    as soon as the source holds more samples than allowed."""
    chars = _num_chars([sample.text, sample.messages, sample.tools])
    if chars > limits.max_chars_per_sample:
        raise CalibrationError(f"{sample.where}: the sample is {chars:,} characters; the limit here is "
                               f"{limits.max_chars_per_sample:,} per sample")
    if len(samples) >= limits.max_samples:
        raise CalibrationError(f"{source} holds more than {limits.max_samples:,} samples, the limit here: "
                               "use fewer samples")
    samples.append(sample)


# --- reading files -----------------------------------------------------------------------------

_BOMS = ((codecs.BOM_UTF32_LE, "utf-32", "UTF-32"), (codecs.BOM_UTF32_BE, "utf-32", "UTF-32"),  # before UTF-16's
         (codecs.BOM_UTF8, "utf-8-sig", "UTF-8"), (codecs.BOM_UTF16_LE, "utf-16", "UTF-16"),
         (codecs.BOM_UTF16_BE, "utf-16", "UTF-16"))
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
          (b"%PDF-", "a PDF document"), (b"PK\x03\x04", "a zip archive (or .docx, .xlsx, .npz)"),
          (b"\x1f\x8b", "a gzip archive"), (b"\x7fELF", "a program"))


def _read_text(path: Path, limits: CalibrationLimits) -> str:
    """The text of a calibration file: size checked before reading, binary files and encodings
    other than UTF-8 (or UTF-16/32 with a byte-order mark) refused with a message saying which."""
    size = path.stat().st_size
    if size > limits.max_file_bytes:
        raise CalibrationError(f"{path.name} is {_size(size)}; the limit here is {_size(limits.max_file_bytes)}")
    with path.open("rb") as f:
        data = f.read(limits.max_file_bytes + 1)  # the file may have grown since stat()
    if len(data) > limits.max_file_bytes:
        raise CalibrationError(f"{path.name} is over {_size(limits.max_file_bytes)}, the limit here")
    return _decode(data, path.name)


def _decode(data: bytes, name: str) -> str:
    for bom, codec, label in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(codec)  # the codec drops the mark (a UTF-8 BOM would break line 1's JSON)
            except UnicodeDecodeError as exc:
                raise CalibrationError(f"{name} starts with a {label} byte-order mark but is not valid {label} "
                                       f"(byte {exc.start:,})") from None
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            raise CalibrationError(f"{name} is not a text file (it looks like {kind})")
    if b"\x00" in data:
        raise CalibrationError(f"{name} is not a text file (it looks like binary data; "
                               "UTF-16 text needs a byte-order mark — or save it as UTF-8)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise CalibrationError(f"{name} is not UTF-8 text (byte {exc.start:,}, line {line}): "
                               "save it as UTF-8") from None


# --- records -----------------------------------------------------------------------------------

ROLES = ("system", "user", "assistant", "tool")
# Gemma's name for the assistant. Read as "assistant", which every template knows; Gemma's own
# templates (the bundled one, the char tokenizer's) render "assistant" as `<|turn>model` anyway.
_ROLE_ALIASES = {"model": "assistant"}


MAX_IMAGE_BYTES = 20_000_000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")


def _validate_messages(messages: list, where: str, folder: Path | None = None) -> tuple[dict, ...]:
    """The messages as every chat template expects them, or a CalibrationError naming line and message.
    Image parts are resolved inside `folder` (the .jsonl file's own); without one none are accepted."""
    out = []
    for i, m in enumerate(messages, 1):
        if not isinstance(m, dict) or "role" not in m:
            raise CalibrationError(f"{where}: message {i}: each message needs a 'role' and 'content'")
        role = _ROLE_ALIASES.get(m["role"], m["role"]) if isinstance(m["role"], str) else m["role"]
        if role not in ROLES:
            raise CalibrationError(f"{where}: message {i} has role {m['role']!r}; allowed roles: "
                                   f"{', '.join(ROLES)} ('model' is read as assistant)")
        content = m.get("content")
        if content is None:
            if not (role == "assistant" and m.get("tool_calls")):
                raise CalibrationError(f"{where}: message {i} ({role}) has no 'content'")
        elif isinstance(content, list):
            m = {**m, "content": _validate_parts(content, f"{where}: message {i} ({role})", folder)}
        elif not isinstance(content, str):
            raise CalibrationError(f"{where}: message {i} ({role}): 'content' must be a string or a list of parts, "
                                   f"not {type(content).__name__}")
        calls = m.get("tool_calls")
        if calls is not None and not (isinstance(calls, list) and all(isinstance(c, dict) for c in calls)):
            raise CalibrationError(f"{where}: message {i} ({role}): 'tool_calls' must be a list of objects")
        out.append(m if role == m["role"] else {**m, "role": role})
    return tuple(out)


def _validate_parts(parts: list, where: str, folder: Path | None) -> list[dict]:
    out = []
    for part in parts:
        if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
            out.append(part)
        elif isinstance(part, dict) and part.get("type") == "image" and isinstance(part.get("image"), str):
            out.append({**part, "image": _image_path(part["image"], where, folder)})
        else:
            raise CalibrationError(f"{where}: each content part must be {{\"type\": \"text\", \"text\": ...}} or "
                                   "{\"type\": \"image\", \"image\": \"picture.png\"}")
    return out


def _image_path(name: str, where: str, folder: Path | None) -> str:
    """A picture named in a calibration file: a relative path inside the file's folder, which must exist
    and be a picture file of a sane size. Never an absolute path or one leading out of the folder: an
    uploaded file must not make the server read its other files."""
    if folder is None:
        raise CalibrationError(f"{where}: images are accepted in .jsonl files only")
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts or not name.strip():
        raise CalibrationError(f"{where}: image '{name}' must be a relative path inside the file's folder")
    path = (folder / rel).resolve()
    if folder.resolve() not in path.parents:
        raise CalibrationError(f"{where}: image '{name}' leads out of the file's folder")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise CalibrationError(f"{where}: '{name}' is not a picture file ({', '.join(IMAGE_SUFFIXES)})")
    if not path.is_file():
        raise CalibrationError(f"{where}: image '{name}' not found next to the calibration file")
    if path.stat().st_size > MAX_IMAGE_BYTES:
        raise CalibrationError(f"{where}: image '{name}' is {_size(path.stat().st_size)}; the limit is "
                               f"{_size(MAX_IMAGE_BYTES)}")
    return str(path)


def _sample_from_record(obj: dict, default_category: str, where: str, folder: Path | None = None) -> Sample:
    category = str(obj.get("category") or default_category)
    if isinstance(obj.get("messages"), list) and obj["messages"]:
        messages = _validate_messages(obj["messages"], where, folder)
        tools = obj.get("tools")
        if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
            raise CalibrationError(f"{where}: 'tools' must be a list of objects")
        return Sample(category, messages=messages, tools=tuple(tools) if tools else None, where=where)
    if isinstance(obj.get("text"), str) and obj["text"].strip():
        return Sample(category, text=obj["text"], where=where)
    raise CalibrationError(f"{where}: needs a non-empty 'text' string or a 'messages' list")


def _parse_jsonl(text: str, name: str, default_category: str, limits: CalibrationLimits,
                 folder: Path | None = None) -> list[Sample]:
    samples: list[Sample] = []
    for lineno, line in enumerate(text.split("\n"), 1):  # not splitlines(): JSON may hold a raw U+2028
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CalibrationError(f"{name} line {lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise CalibrationError(f"{name} line {lineno}: expected an object with 'text' or 'messages'")
        _admit(samples, _sample_from_record(obj, default_category, f"{name} line {lineno}", folder), limits, name)
    return samples


def _parse_txt(text: str, name: str, category: str, limits: CalibrationLimits) -> list[Sample]:
    """One sample per blank-line-separated block."""
    samples: list[Sample] = []
    line, counted = 1, 0  # the line number at offset `counted`, advanced block by block
    seps = list(re.finditer(r"\n\s*\n", text))
    for start, end in zip([0, *(m.end() for m in seps)], [*(m.start() for m in seps), len(text)]):
        chunk = text[start:end]
        body = chunk.strip()
        if not body:
            continue
        first = start + len(chunk) - len(chunk.lstrip())
        line, counted = line + text.count("\n", counted, first), first
        where = f"{name} block {len(samples) + 1} (line {line})"
        _admit(samples, Sample(category, text=body, where=where), limits, name)
    return samples


def _load_local(path: Path, limits: CalibrationLimits) -> list[Sample]:
    if not path.is_file():
        raise CalibrationError(f"calibration file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".txt"):
        raise CalibrationError(f"unsupported calibration file type '{path.suffix}': use .jsonl or .txt")
    text = _read_text(path, limits)
    if suffix == ".jsonl":
        samples = _parse_jsonl(text, path.name, path.stem, limits, folder=path.parent)
    else:
        samples = _parse_txt(text, path.name, path.stem, limits)
    if not samples:
        raise CalibrationError(f"calibration file {path.name} holds no samples")
    return samples


# --- sources ----------------------------------------------------------------------------------

def builtin_categories(include_toy: bool = True) -> list[str]:
    names = sorted(p.stem for p in BUILTIN_DIR.glob("*.jsonl"))
    return [n for n in names if include_toy or not n.startswith(TOY_PREFIX)]


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
    for name in chosen:  # our own data: the generous limits, whatever the caller's
        path = BUILTIN_DIR / f"{name}.jsonl"
        samples += _parse_jsonl(_read_text(path, LOCAL_LIMITS), path.name, name, LOCAL_LIMITS, folder=BUILTIN_DIR)
    return samples


SERVER_PATHS_REFUSED = ("server paths are not accepted here: choose built-in categories, upload a file, "
                        "or give a Hub dataset id (name[subset](split):N)")


def _looks_like_path(item: str) -> bool:
    """Decided from the text alone (the answer must not depend on what exists on the server)."""
    return (item.startswith(("/", ".", "~")) or "\\" in item or ".." in item
            or item.lower().endswith((".jsonl", ".txt", ".json")) or not _HUB_ITEM.match(item))


def _load_hub(spec: str, limits: CalibrationLimits, remote_only: bool = False) -> list[Sample]:
    """Hub datasets. `remote_only` (public mode): path-like items are refused unread, and
    `datasets` is kept off the local disk — it would load a local folder of the same name, and its
    packaged builders (`text`, `json`, ...) read the data files of the current directory."""
    items = [s.strip() for s in spec.split(",") if s.strip()]
    if remote_only and any(_looks_like_path(item) for item in items):
        raise CalibrationError(SERVER_PATHS_REFUSED)
    try:
        import datasets
        from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES
    except ImportError:
        raise CalibrationError("Hub datasets need the 'datasets' package: pip install datasets") from None
    samples: list[Sample] = []
    for item in items:
        m = _HUB_ITEM.match(item)
        if not m:
            raise CalibrationError(f"cannot read dataset spec '{item}': expected name[subset](split):N")
        name, subset, split, n = m["name"], m["subset"], m["split"] or "train", int(m["n"] or 64)
        if remote_only and name in _PACKAGED_DATASETS_MODULES:
            raise CalibrationError(SERVER_PATHS_REFUSED)
        if n > limits.max_samples:
            raise CalibrationError(f"'{item}' asks for {n:,} rows; the limit here is {limits.max_samples:,} samples")
        try:
            ds = datasets.load_dataset(f"hf://datasets/{name}" if remote_only else name, subset, split=split,
                                       streaming=True)
            rows = [row for _, row in zip(range(n), ds)]
        except Exception as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if "scripts are no longer supported" in reason:  # it names a local file when one exists
                reason = "dataset scripts are not supported"
            raise CalibrationError(f"could not load Hub dataset '{item}' (offline, or no such dataset/split): "
                                   f"{reason}") from None
        category = name.split("/")[-1] + (f"-{subset}" if subset else "")
        for i, row in enumerate(rows):
            _admit(samples, _sample_from_hub_row(row, category, f"{item} row {i}"), limits, spec)
    return samples


_SHAREGPT_ROLES = {"human": "user", "gpt": "assistant"}


def _sample_from_hub_row(row: dict, category: str, where: str) -> Sample:
    for key in ("messages", "conversations", "conversation"):
        turns = row.get(key)
        if isinstance(turns, list) and turns and isinstance(turns[0], dict):
            messages = []
            for t in turns:  # OpenAI style {"role", "content"} or ShareGPT style {"from", "value"}
                if not isinstance(t, dict):
                    raise CalibrationError(f"{where}: each turn of '{key}' must be an object")
                role = t.get("role") or t.get("from")
                m = {k: v for k, v in t.items() if k not in ("from", "value")}
                m["role"] = _SHAREGPT_ROLES.get(role, role) if isinstance(role, str) else role
                if "content" not in m and "value" in t:
                    m["content"] = t["value"]
                messages.append(m)
            return Sample(category, messages=_validate_messages(messages, where), where=where)
    for key in ("text", "content", "prompt"):
        if isinstance(row.get(key), str) and row[key].strip():
            return Sample(category, text=row[key], where=where)
    raise CalibrationError(f"{where}: no 'messages' or 'text' column (columns: {', '.join(row)})")


def load_samples(spec: str, samples_per_category: int | None = None, *, limits: CalibrationLimits | None = None,
                 allow_local_files: bool = True) -> list[Sample]:
    """Samples from a spec, at most `samples_per_category` of each category, in file order.

    `limits` (default LOCAL_LIMITS) caps a file or Hub source. `allow_local_files=False` makes
    every spec but `builtin…` a Hub dataset id: no server path is checked or read, and anything
    path-like gets one message whether or not it exists (no probing of the server's files).
    """
    limits = limits or LOCAL_LIMITS
    spec = (spec or "").strip()
    if not spec:
        raise CalibrationError("empty calibration spec: use 'builtin', a .jsonl/.txt file, or name[subset](split):N")
    if spec == "builtin" or spec.startswith("builtin:"):
        samples = _load_builtin(spec.partition(":")[2])
    elif not allow_local_files:
        samples = _load_hub(spec, limits, remote_only=True)
    elif spec.lower().endswith((".jsonl", ".txt", ".json")) or Path(spec).expanduser().exists():
        samples = _load_local(Path(spec).expanduser(), limits)
    else:
        samples = _load_hub(spec, limits)
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
