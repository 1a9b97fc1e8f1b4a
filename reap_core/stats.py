"""The statistics object between the observer and everything after it.

Per calibration category C, MoE layer L and expert E, float64:
  count           routed tokens
  gate_sum        sum of gates (gate = the combine weight the model applies, see the adapter)
  norm_sum        sum of ||f_j(x)||_2 (expert output before weighting)
  gated_norm_sum  sum of gate * ||f_j(x)||_2
  norm_max        max of ||f_j(x)||_2
  act_max         max |element| of f_j(x)   (finds "super experts")
plus, per (layer, expert), the calibration tokens where gate*||f|| peaked, as text snippets.

It is small ([C, L, E] arrays), so a calibration runs once and every criterion, ratio and
category view afterwards is instant; it saves to one .npz file (no pickle) to share or reload.
"""

from __future__ import annotations

import io
import json
import math
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import StatisticsError

SUM_STATS = ("count", "gate_sum", "norm_sum", "gated_norm_sum")
MAX_STATS = ("norm_max", "act_max")
FORMAT_VERSION = 1


@dataclass
class ExpertStats:
    model_id: str
    layer_indices: list[int]            # decoder layer of each row
    num_experts: int
    top_k: int
    categories: list[str]
    arrays: dict[str, np.ndarray]       # name -> [C, L, E] float64
    tokens_per_category: list[int]
    calibration: dict = field(default_factory=dict)   # spec, fingerprint, max_tokens, per-category summary
    top_tokens: list | None = None      # [L][E] -> list of {score, category, before, token, after}
    expert_groups: tuple[int, int] = (1, 1)   # group-limited routing: (groups, groups chosen per token)

    @property
    def num_layers(self) -> int:
        return len(self.layer_indices)

    @property
    def num_tokens(self) -> int:
        return int(sum(self.tokens_per_category))

    def total(self, name: str, categories: list[str] | None = None) -> np.ndarray:
        """[L, E] statistic over all (or the chosen) categories."""
        if name not in self.arrays:
            raise StatisticsError(f"unknown statistic '{name}'; known: {', '.join(self.arrays)}")
        arr = self.arrays[name]
        if categories:
            missing = [c for c in categories if c not in self.categories]
            if missing:
                raise StatisticsError(f"category {missing[0]!r} is not in these statistics "
                                      f"({', '.join(self.categories)})")
            arr = arr[[self.categories.index(c) for c in categories]]
        return arr.max(axis=0) if name in MAX_STATS else arr.sum(axis=0)

    def fingerprint(self) -> str:
        return str(self.calibration.get("fingerprint", ""))

    # --- persistence ----------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (temp file + rename), so a crash never leaves a half file."""
        path = stats_path(path)
        meta = dict(format=FORMAT_VERSION, model_id=self.model_id, layer_indices=self.layer_indices,
                    num_experts=self.num_experts, top_k=self.top_k, categories=self.categories,
                    tokens_per_category=self.tokens_per_category, calibration=self.calibration,
                    top_tokens=self.top_tokens, expert_groups=list(self.expert_groups))
        tmp = path.with_name(path.name + ".tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez_compressed(f, meta=np.array(json.dumps(meta)), **self.arrays)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, max_bytes: int | None = None) -> "ExpertStats":
        """Read a file written by `save`, trusting nothing in it: the app loads files that strangers
        upload, and what they claim decides which experts an export deletes.

        Every problem is a StatisticsError naming the file and the first thing wrong: an unreadable,
        truncated or oversized archive, a missing array, a header with wrong types or values, arrays
        that disagree with the header, NaN, infinite or negative values, malformed token snippets.
        `max_bytes` (None = no limit) is checked before anything is read; it also caps what the
        archive may decompress to (MAX_EXPANSION times as much), so a small zip bomb cannot fill memory.
        """
        path = Path(path)
        if not path.is_file():
            raise StatisticsError(f"statistics file not found: {path}")
        try:
            meta, arrays = _read_archive(path, max_bytes)
            return cls(**_checked_fields(meta, arrays))
        except StatisticsError as exc:
            raise StatisticsError(f"{path.name}: {exc}") from None

    def check_matches(self, layer_indices: list[int], num_experts: int, top_k: int) -> None:
        """Refuse statistics whose claims do not hold for the model they are used with.

        Statistics of another model would prune the wrong experts, and a header claiming another
        top-k lets a ratio keep fewer experts than the router picks per token (the export then fails).
        `layer_indices` are the model's MoE decoder layers, in order (LoadedModel.moe_layer_indices,
        or MoEAdapter.moe_layer_indices(config) before any weight is read).
        """
        layer_indices = [int(i) for i in layer_indices]
        if (self.num_layers, self.num_experts) != (len(layer_indices), num_experts):
            raise StatisticsError(
                f"these statistics are for {self.num_layers} MoE layers x {self.num_experts} experts "
                f"({self.model_id}), but the model has {len(layer_indices)} x {num_experts}")
        if self.layer_indices != layer_indices:
            raise StatisticsError(
                f"these statistics are for the MoE layers {_short_list(self.layer_indices)} "
                f"({self.model_id}), but the model's MoE layers are {_short_list(layer_indices)}")
        if self.top_k != top_k:
            raise StatisticsError(
                f"these statistics say each token is routed to top_k={self.top_k} experts ({self.model_id}), "
                f"but the model routes each token to {top_k}: they were not made with this model")


def stats_path(path: str | os.PathLike) -> Path:
    """The file `save` writes for `path`: '.npz' is appended unless the name already ends in it."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_suffix(path.suffix + ".npz") if path.suffix else path.with_suffix(".npz")
    return path


def _short_list(values: list[int], limit: int = 8) -> str:
    text = ", ".join(str(v) for v in values[:limit])
    return f"[{text}{', ...' if len(values) > limit else ''}] ({len(values)})"


# --- reading an untrusted file --------------------------------------------------------------------

MAX_EXPANSION = 10            # with max_bytes: the archive may hold at most this many times as much
MAX_TEXT_CHARS = 2000         # any one text the app shows: model id, category, snippet (real snippets: ~10 tokens)
SNIPPET_KEYS = frozenset({"score", "category", "before", "token", "after"})
SNIPPET_PLACE = "at"        # optional [sample, position]: orders equal scores the same in every run
ARRAY_NAMES = SUM_STATS + MAX_STATS
# What a damaged archive raises inside zipfile / zlib / numpy: all mean "unreadable", none is a bug.
_READ_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError,
                NotImplementedError, RuntimeError, OverflowError, UnicodeDecodeError)


def _read_archive(path: Path, max_bytes: int | None) -> tuple[object, dict[str, np.ndarray]]:
    """(decoded JSON header, raw arrays) from the .npz zip, checked for size before reading."""
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise StatisticsError(f"the file is {_mb(size)}, larger than the {_mb(max_bytes)} accepted for statistics")
    if size == 0:
        raise StatisticsError("the file is empty: not a REAP Studio statistics file")
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename: info for info in archive.infolist()}
            missing = [n for n in ("meta",) + ARRAY_NAMES if f"{n}.npy" not in members]
            if missing:
                raise StatisticsError(f"not a REAP Studio statistics file (no {', '.join(missing)} inside)")
            if max_bytes is not None:
                unpacked = sum(info.file_size for info in members.values())
                if unpacked > MAX_EXPANSION * max_bytes:
                    raise StatisticsError(f"the archive unpacks to {_mb(unpacked)}, more than the "
                                          f"{_mb(MAX_EXPANSION * max_bytes)} accepted for statistics")
            meta_array = _read_npy(archive, "meta", kinds="U", shape=())
            try:
                meta = json.loads(str(meta_array))
            except (ValueError, RecursionError) as exc:
                raise StatisticsError(f"its header is not valid JSON ({_first_line(exc)})") from None
            shape = _expected_shape(meta)
            arrays = {n: _read_npy(archive, n, kinds="fiu", shape=shape) for n in ARRAY_NAMES}
    except StatisticsError:
        raise
    except _READ_ERRORS as exc:
        raise StatisticsError(f"not a REAP Studio statistics file, or a damaged one "
                              f"({type(exc).__name__}: {_first_line(exc)})") from None
    return meta, arrays


def _read_npy(archive: zipfile.ZipFile, name: str, kinds: str, shape: tuple[int, ...]) -> np.ndarray:
    """One array, its header checked (dtype kind, shape) before its data is allocated or read."""
    data = io.BytesIO(archive.read(f"{name}.npy"))
    version = np.lib.format.read_magic(data)
    if version == (1, 0):
        found_shape, _, dtype = np.lib.format.read_array_header_1_0(data)
    elif version == (2, 0):
        found_shape, _, dtype = np.lib.format.read_array_header_2_0(data)
    else:
        raise StatisticsError(f"{name} is stored in an unsupported .npy version {version}")
    if dtype.kind not in kinds or dtype.hasobject:
        raise StatisticsError(f"{name} holds {dtype} values, not numbers" if kinds != "U" else
                              f"its header is {dtype} data, not text")
    if tuple(found_shape) != tuple(shape):
        if kinds == "U":
            raise StatisticsError("its header is not one text")
        raise StatisticsError(f"{name} has the shape {tuple(found_shape)}, but its header says {tuple(shape)} "
                              f"(categories, layers, experts)")
    data.seek(0)
    return np.lib.format.read_array(data, allow_pickle=False)


def _expected_shape(meta: object) -> tuple[int, int, int]:
    """[C, L, E] from the header, validating just what the shape needs (before arrays are read)."""
    if not isinstance(meta, dict):
        raise StatisticsError(f"its header is a JSON {type(meta).__name__}, not an object")
    _check_format(meta)
    categories = _string_list(meta, "categories")
    layers = _index_list(meta, "layer_indices")
    num_experts = _int_field(meta, "num_experts", minimum=1)
    return len(categories), len(layers), num_experts


def _checked_fields(meta: dict, arrays: dict[str, np.ndarray]) -> dict:
    """The keyword arguments of ExpertStats, every claim of the file checked."""
    categories = _string_list(meta, "categories")
    num_experts = _int_field(meta, "num_experts", minimum=1)
    top_k = _int_field(meta, "top_k", minimum=1)
    if top_k > num_experts:
        raise StatisticsError(f"its header says top_k={top_k}, more than its num_experts={num_experts}")
    tokens = meta.get("tokens_per_category")
    if not isinstance(tokens, list) or not all(_is_int(t) and t >= 0 for t in tokens):
        raise StatisticsError("tokens_per_category in its header must be a list of non-negative whole numbers")
    if len(tokens) != len(categories):
        raise StatisticsError(f"its header lists {len(categories)} categories but {len(tokens)} "
                              f"tokens_per_category values")
    model_id = meta.get("model_id")
    if not isinstance(model_id, str) or len(model_id) > MAX_TEXT_CHARS:
        raise StatisticsError(f"model_id in its header must be a text of at most {MAX_TEXT_CHARS} characters")
    calibration = meta.get("calibration", {})
    _check_calibration(calibration)
    layer_indices = _index_list(meta, "layer_indices")
    checked = {name: _checked_array(name, a) for name, a in arrays.items()}
    top_tokens = meta.get("top_tokens")
    if top_tokens is not None:
        _check_top_tokens(top_tokens, len(layer_indices), num_experts, set(categories))
    groups = meta.get("expert_groups", [1, 1])
    if not (isinstance(groups, list) and len(groups) == 2 and all(_is_int(g) and g >= 1 for g in groups)
            and num_experts % groups[0] == 0 and groups[1] <= groups[0]):
        raise StatisticsError(f"expert_groups in its header must be [groups, groups per token] dividing "
                              f"num_experts={num_experts}, not {_show(groups)}")
    return dict(model_id=model_id, layer_indices=layer_indices, num_experts=num_experts, top_k=top_k,
                categories=categories, arrays=checked, tokens_per_category=tokens, calibration=calibration,
                top_tokens=top_tokens, expert_groups=(groups[0], groups[1]))


def _check_format(meta: dict) -> None:
    if meta.get("format") != FORMAT_VERSION or isinstance(meta.get("format"), bool):
        raise StatisticsError(f"unsupported statistics format {meta.get('format')!r} "
                              f"(this version reads format {FORMAT_VERSION})")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_field(meta: dict, key: str, minimum: int) -> int:
    value = meta.get(key)
    if not _is_int(value) or value < minimum:
        raise StatisticsError(f"{key} in its header must be a whole number >= {minimum}, not {_show(value)}")
    return value


def _string_list(meta: dict, key: str) -> list[str]:
    value = meta.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and len(v) <= MAX_TEXT_CHARS
                                                           for v in value):
        raise StatisticsError(f"{key} in its header must be a non-empty list of texts (at most {MAX_TEXT_CHARS} "
                              f"characters each), not {_show(value)}")
    if len(set(value)) != len(value):
        raise StatisticsError(f"{key} in its header lists the same name twice")
    return value


def _index_list(meta: dict, key: str) -> list[int]:
    value = meta.get(key)
    if (not isinstance(value, list) or not value or not all(_is_int(v) and v >= 0 for v in value)
            or len(set(value)) != len(value)):
        raise StatisticsError(f"{key} in its header must be a non-empty list of distinct non-negative whole "
                              f"numbers, not {_show(value)}")
    return value


def _checked_array(name: str, array: np.ndarray) -> np.ndarray:
    """float64, with every value finite and non-negative (counts, sums of |gate| and norms, maxima)."""
    array = array.astype(np.float64)
    if np.isnan(array).any():
        raise StatisticsError(f"contains NaN values in {name}")
    if np.isinf(array).any():
        raise StatisticsError(f"contains infinite values in {name}")
    if (array < 0).any():
        raise StatisticsError(f"contains negative values in {name} (counts, sums and maxima are never negative)")
    return array


_CALIBRATION_TEXTS = ("spec", "fingerprint")
_CALIBRATION_COUNTS = ("max_tokens", "samples", "tokens", "truncated")


def _check_calibration(calibration: object) -> None:
    """The fields other modules read (recipe, card, evaluation) have the types they expect."""
    if not isinstance(calibration, dict):
        raise StatisticsError("calibration in its header must be an object")
    for key in _CALIBRATION_TEXTS:
        if key in calibration and not (isinstance(calibration[key], str) and len(calibration[key]) <= MAX_TEXT_CHARS):
            raise StatisticsError(f"calibration.{key} in its header must be a text of at most {MAX_TEXT_CHARS} "
                                  f"characters, not {_show(calibration[key])}")
    for key in _CALIBRATION_COUNTS:
        value = calibration.get(key)
        if value is not None and not (_is_int(value) and value >= 0):
            raise StatisticsError(f"calibration.{key} in its header must be a non-negative whole number, "
                                  f"not {_show(value)}")
    summary = calibration.get("summary")
    if summary is not None and not (isinstance(summary, dict) and all(isinstance(v, dict) for v in summary.values())):
        raise StatisticsError("calibration.summary in its header must map each category to an object")


def _check_top_tokens(top_tokens: object, num_layers: int, num_experts: int, categories: set[str]) -> None:
    """[L][E] lists of {score, category, before, token, after}: the app shows this text to people,
    so anything else is refused (not dropped: a file with a malformed part was edited or damaged)."""
    def bad(where: str, problem: str) -> StatisticsError:
        return StatisticsError(f"top_tokens{where} {problem}; refusing the file (its token snippets are shown "
                               f"in the expert inspector)")

    if not isinstance(top_tokens, list) or len(top_tokens) != num_layers:
        raise bad("", f"must be a list with one entry per MoE layer ({num_layers})")
    for row, experts in enumerate(top_tokens):
        if not isinstance(experts, list) or len(experts) != num_experts:
            raise bad(f"[{row}]", f"must be a list with one entry per expert ({num_experts})")
        for e, items in enumerate(experts):
            if not isinstance(items, list):
                raise bad(f"[{row}][{e}]", "must be a list of snippets")
            for i, item in enumerate(items):
                where = f"[{row}][{e}][{i}]"
                if not isinstance(item, dict) or set(item) - {SNIPPET_PLACE} != SNIPPET_KEYS:
                    raise bad(where, f"must be an object with exactly {', '.join(sorted(SNIPPET_KEYS))} "
                                     f"(and optionally {SNIPPET_PLACE})")
                place = item.get(SNIPPET_PLACE, [0, 0])
                if not (isinstance(place, list) and len(place) == 2 and all(_is_int(x) and x >= 0 for x in place)):
                    raise bad(where, f"has {SNIPPET_PLACE}={_show(place)}, not [sample, position]")
                score = item["score"]
                if not isinstance(score, (int, float)) or isinstance(score, bool) or not math.isfinite(score):
                    raise bad(where, f"has the score {_show(score)}, not a finite number")
                for key in ("category", "before", "token", "after"):
                    if not isinstance(item[key], str):
                        raise bad(where, f"has a {key} that is not a text")
                    if len(item[key]) > MAX_TEXT_CHARS:
                        raise bad(where, f"has a {key} longer than {MAX_TEXT_CHARS} characters")
                if item["category"] not in categories:
                    raise bad(where, f"names the category {item['category'][:40]!r}, which is not in its header")


def _show(value: object) -> str:
    text = json.dumps(value)     # JSON spelling (true, null, NaN), as the file has it
    return text if len(text) <= 40 else text[:37] + "..."


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:120] if text else "no details"


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"
