"""What the app needs beyond the pipeline stages: shared caches and ready-to-show summaries.

Loaded models are shared by every session (one copy of the weights per model, masks are per
call); statistics are cached per (model, calibration fingerprint), so a second session that
calibrates the same model on the same data gets the result at once. Still no UI code here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from .calibration import CalibrationSet
from .demo import KNOWS
from .eval_defaults import is_bundled
from .model import ASSETS_DIR, LoadedModel, load_model
from .observer import observe
from .sequential import GpuCall, load_offloaded, observe_sequential, weights_fit
from .plan import PruningPlan
from .saliency import get_criterion
from .sizing import (ParamCounts, checkpoint_format, count_params, human_bytes, human_count, size_at,
                     sizes_for_ratio)
from .stats import ExpertStats

FLAGSHIPS_FILE = ASSETS_DIR / "flagships.json"   # written by scripts/flagship_sizes.py


class ModelCache:
    """Thread-safe cache of loaded models; concurrent requests for one model load it once."""

    def __init__(self, max_models: int = 1, device_bytes: int | None = None):
        self.max_models, self.device_bytes = max_models, device_bytes   # device_bytes: sequential.weights_fit
        self._models: dict[str, LoadedModel] = {}
        self._counts: dict[str, tuple[ParamCounts, str]] = {}
        self._offloaded: dict[int, tuple[Path, str]] = {}   # id(loaded) -> (offload folder, why)
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}

    def get(self, model_id: str, dtype: str = "auto", token: str | bool | None = None,
            trust_remote_code: bool = False, allow_local_paths: bool = True) -> LoadedModel:
        """`token`: None = the saved token, False = none at all, a string = that visitor's token. A model
        read with a visitor's token is cached under that token, so no other visitor gets it from here.

        A model whose weights do not fit the device (sequential.weights_fit; REAP_STUDIO_LAYER_BY_LAYER=1
        forces it, =0 never) is loaded with its decoder layers on disk: calibration then runs layer by
        layer (`layer_by_layer(loaded)` says so), chat and evaluation read the layers as they go."""
        who = hashlib.sha256(token.encode()).hexdigest()[:16] if isinstance(token, str) else str(token)
        key = f"{model_id}|{dtype}|{who}"
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            if key in self._models:
                return self._models[key]
            forced = os.environ.get("REAP_STUDIO_LAYER_BY_LAYER", "").strip()
            fits, notice = (forced != "1", "layer by layer forced (REAP_STUDIO_LAYER_BY_LAYER=1)") if forced in ("0", "1") \
                else weights_fit(model_id, dtype, token=token, trust_remote_code=trust_remote_code,
                                 allow_local_paths=allow_local_paths, device_bytes=self.device_bytes)
            folder = None
            if fits:
                loaded = load_model(model_id, dtype=dtype, token=token, trust_remote_code=trust_remote_code,
                                    allow_local_paths=allow_local_paths)
            else:
                loaded, folder = load_offloaded(model_id, dtype=dtype, token=token, trust_remote_code=trust_remote_code,
                                                allow_local_paths=allow_local_paths)
            with self._lock:
                while len(self._models) >= self.max_models:  # big models: keep one in memory
                    old = self._models.pop(next(iter(self._models)))
                    gone = self._offloaded.pop(id(old), None)
                    if gone is not None:
                        shutil.rmtree(gone[0], ignore_errors=True)
                self._models[key] = loaded
                if folder is not None:
                    self._offloaded[id(loaded)] = (folder, notice)
            return loaded

    def layer_by_layer(self, loaded: LoadedModel) -> str | None:
        """Why this model's layers stay on disk (it is calibrated layer by layer), or None."""
        entry = self._offloaded.get(id(loaded))
        return entry[1] if entry else None

    def counts(self, loaded: LoadedModel) -> tuple[ParamCounts, str]:
        """(parameter counts, checkpoint format) — counted once per model."""
        if loaded.model_id not in self._counts:
            self._counts[loaded.model_id] = (count_params(loaded.config, loaded.adapter),
                                             checkpoint_format(loaded.config))
        return self._counts[loaded.model_id]


class SessionSignals:
    """Per-session stop flags for long actions (chat streaming, calibration, evaluation).

    A new action of a kind replaces the session's flag of that kind; Stop / Clear / Cancel set it,
    and the action's progress callback (or the chat's stopping criterion) sees it at its next step.
    """

    def __init__(self):
        self._events: dict[tuple[str, str], threading.Event] = {}
        self._lock = threading.Lock()

    def start(self, session_id: str, kind: str) -> threading.Event:
        event = threading.Event()
        with self._lock:
            self._events[(session_id, kind)] = event
        return event

    def stop(self, session_id: str, *kinds: str) -> None:
        with self._lock:
            for kind in kinds:
                event = self._events.pop((session_id, kind), None)
                if event is not None:
                    event.set()

    def forget(self, session_id: str) -> None:
        with self._lock:
            for key in [k for k in self._events if k[0] == session_id]:
                self._events.pop(key).set()


class StatsCache:
    """Statistics per (model, calibration fingerprint), the most recently used `max_entries` kept:
    a public server's memory must not grow with every visitor's calibration."""

    def __init__(self, max_entries: int = 32):
        self.max_entries = max_entries
        self._stats: OrderedDict[tuple[str, str], ExpertStats] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_observe(self, loaded: LoadedModel, calib: CalibrationSet, batch_size: int = 4,
                       progress: Callable[[int, int, int], None] | None = None,
                       layer_progress: Callable[[int, int, int, int], None] | None = None,
                       layer_by_layer: bool = False, gpu_call: GpuCall | None = None) -> tuple[ExpertStats, bool]:
        """(statistics, came_from_cache). `layer_by_layer`: sequential.observe_sequential (the same numbers;
        progress per layer and batch through `layer_progress`), each layer a call of its own through
        `gpu_call` when given (ZeroGPU)."""
        key = (loaded.model_id, calib.fingerprint())
        with self._lock:
            if key in self._stats:
                self._stats.move_to_end(key)
                return self._stats[key], True
        if layer_by_layer:
            stats = observe_sequential(loaded, calib, batch_size=batch_size, progress=layer_progress, gpu_call=gpu_call)
        else:
            stats = observe(loaded, calib, batch_size=batch_size, progress=progress)
        with self._lock:
            self._stats[key] = stats
            while len(self._stats) > self.max_entries:
                self._stats.popitem(last=False)
        return stats, False

    def __len__(self) -> int:
        return len(self._stats)


class MergeCache:
    """Merge signals per (model, statistics) and merged models per (model, statistics, method, ratio): the
    merged experts are a copy beside the shared model (MergedModel.nbytes), so only `max_merged` are kept."""

    def __init__(self, max_merged: int = 4, max_signals: int = 8):
        self.max_merged, self.max_signals = max_merged, max_signals
        self._signals: OrderedDict[tuple, Any] = OrderedDict()
        self._merged: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()

    def signals(self, loaded: LoadedModel, stats: ExpertStats, progress: Callable[[int, int, int], None] | None = None,
                allow_local_files: bool = True):
        from .merge_signals import collect_for_stats
        key = (loaded.model_id, stats.fingerprint())
        with self._lock:
            if key in self._signals:
                self._signals.move_to_end(key)
                return self._signals[key]
        signals = collect_for_stats(loaded, stats, progress=progress, allow_local_files=allow_local_files)
        with self._lock:
            self._signals[key] = signals
            while len(self._signals) > self.max_signals:
                self._signals.popitem(last=False)
        return signals

    def merged(self, loaded: LoadedModel, stats: ExpertStats, method: str, ratio: float,
               progress: Callable[[int, int, int], None] | None = None, allow_local_files: bool = True):
        """The MergedModel of `method` at `ratio` (signals collected first if needed: one calibration pass)."""
        from .merge_plan import plan_merge
        from .merging import build_merged
        key = (loaded.model_id, stats.fingerprint(), method, round(float(ratio), 9))
        with self._lock:
            if key in self._merged:
                self._merged.move_to_end(key)
                return self._merged[key]
        signals = self.signals(loaded, stats, progress, allow_local_files)
        merged = build_merged(loaded, plan_merge(stats, signals, method, ratio))
        with self._lock:
            self._merged[key] = merged
            while len(self._merged) > self.max_merged:
                self._merged.popitem(last=False)
        return merged


@dataclass(frozen=True)
class ModelCard:
    rows: list[tuple[str, str]]
    note: str = ""          # one line under the table (what the bundled model knows)

    def markdown(self) -> str:
        (k0, v0), rest = self.rows[0], self.rows[1:]   # first row as the header: no empty header line
        table = f"| {k0} | {v0} |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rest)
        return table + (f"\n\n{self.note}" if self.note else "")


def model_card(loaded: LoadedModel, counts: ParamCounts, fmt: str = "BF16") -> ModelCard:
    size = size_at(counts, counts.num_experts, fmt)
    adapter, config = loaded.adapter, loaded.config
    arch = ", ".join(getattr(config, "architectures", None) or [type(loaded.model).__name__])
    moe = adapter.moe_layers(loaded.model)
    shared = adapter.shared_experts(moe[0][1]) if moe else []
    groups = adapter.expert_groups(config)
    return ModelCard([
        ("Model", f"`{loaded.model_id}`"),
        ("Architecture", f"{arch} ({adapter.layout.family}{', vision tower kept' if loaded.is_multimodal else ''})"),
        ("Layers", f"{loaded.num_layers} ({counts.moe_layers} with MoE)"),
        ("Experts per layer", f"{counts.num_experts} (width {adapter.expert_width(config)})"),
        ("Experts per token (top-k)", str(counts.top_k)),
        ("Gate (what REAP weighs)", adapter.layout.gate_definition),
    ] + ([("Shared experts", f"always on, never pruned ({', '.join(f'`{m}`' for m in shared)})")] if shared else [])
      + ([("Expert groups", f"{groups} (group-limited routing: each token picks its experts from "
                            f"{adapter.groups_chosen(config)} groups); a prune removes the same number of experts "
                            f"from every group")] if groups > 1 else []) + [
        ("Total parameters", human_count(size.total_params)),
        ("Active parameters / token", human_count(size.active_params)),
        ("dtype · device", f"{str(loaded.dtype).replace('torch.', '')} · {loaded.device}"),
        ("Memory (weights)", human_bytes(loaded.memory_bytes())),
        ("Checkpoint", f"{fmt} safetensors, {human_bytes(size.bytes)}"),
    ] + ([("Image input", f"off — the processor could not be loaded ({loaded.processor_error})")]
         if loaded.processor_error else []),
        note=f"**What it knows:** {KNOWS}" if is_bundled(loaded) else "")


@dataclass(frozen=True)
class ThinkingSwitch:
    """What the chat's Thinking checkbox may do for a loaded model: its family's reasoning markup
    (adapter.layout.thinking_markers), and whether the model's own chat template has a switch for it."""
    enabled: bool
    label: str
    info: str


def chat_template_text(tokenizer: Any) -> str:
    """The tokenizer's chat template(s) as one text ('' without one): some tokenizers hold several."""
    template = getattr(tokenizer, "chat_template", None) or ""
    return "\n".join(template.values()) if isinstance(template, dict) else str(template)


def thinking_switch(loaded: LoadedModel) -> ThinkingSwitch:
    family = loaded.adapter.layout.family
    markers = loaded.adapter.layout.thinking_markers
    label = f"Thinking ({family})"
    if not markers:
        return ThinkingSwitch(False, label, f"Off: {family} models have no reasoning block to switch on")
    shown = f"{markers[0]} … {markers[1]}"
    if "enable_thinking" not in chat_template_text(loaded.tokenizer):
        return ThinkingSwitch(False, label, f"This model's chat template has no thinking switch; reasoning it "
                                            f"writes ({shown}) is still folded above the answer")
    return ThinkingSwitch(True, label, f"The model's reasoning block ({shown}), folded above the answer")


# --- the model picker: every family's flagships, with sizes measured from their configs --------------

@dataclass(frozen=True)
class Flagship:
    hub_id: str
    family: str
    total_params: int | None = None      # from assets/flagships.json (None: no config measured here)
    active_params: int | None = None

    def label(self) -> str:
        name = self.hub_id.rpartition("/")[2]
        if self.total_params is None:
            return f"{name} — {self.family}, size not measured here, needs the Hub"
        return (f"{name} — {self.family}, {_billions(self.total_params)} params "
                f"({_billions(self.active_params)} active), needs {hardware_for(self.total_params)} and the Hub")


def _billions(n: int) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


GPU_BYTES = 80e9          # one 80 GB GPU; a node of 8 of them
NODE_GPUS = 8


def hardware_for(total_params: int, bytes_per_param: int = 2) -> str:
    """What holding the weights (bf16 on a GPU) takes, roughly: one GPU, one node, or more."""
    need = total_params * bytes_per_param
    if need <= GPU_BYTES:
        return "a GPU"
    if need <= NODE_GPUS * GPU_BYTES:
        return "several GPUs"
    return "a GPU cluster"


@lru_cache(maxsize=4)
def measured_flagships(path: Path = FLAGSHIPS_FILE) -> dict[str, dict]:
    """Hub id -> {family, total_params, active_params, experts, top_k}; {} without the file."""
    try:
        return json.loads(path.read_text())["models"]
    except (OSError, ValueError, KeyError):
        return {}


def flagships(path: Path = FLAGSHIPS_FILE) -> list[Flagship]:
    """Every registered family's flagship ids, families in registration order (Gemma 4 first), with
    the sizes `python -m reap_core info` gives for those whose configs were measured."""
    from .adapters import ADAPTERS

    measured = measured_flagships(path)
    out, seen = [], set()
    for adapter in ADAPTERS.values():
        for hub_id in adapter.layout.flagships:
            if hub_id in seen:
                continue
            seen.add(hub_id)
            m = measured.get(hub_id) or {}
            out.append(Flagship(hub_id, adapter.layout.family, m.get("total_params"), m.get("active_params")))
    return out


def compression_table(counts: ParamCounts, ratio: float, fmt: str = "BF16") -> str:
    """Markdown: Original vs Pruned, like a model card's table. InvalidPlan for a bad ratio."""
    original, pruned = sizes_for_ratio(counts, ratio, fmt)
    lines = [f"| | Original | Pruned ({ratio:.0%}) |", "|---|---:|---:|"]
    for (k, a), b in zip(original.as_row().items(), pruned.as_row().values()):
        lines.append(f"| {k} | {a} | **{b}** |" if a != b else f"| {k} | {a} | {b} |")
    return "\n".join(lines)


def plan_summary(plan: PruningPlan) -> str:
    prot = sum(len(p) for p in plan.protected) if plan.protected else 0
    if plan.extra.get("merge"):
        return (f"{plan.num_experts} experts merged into {plan.num_kept} in each of {len(plan.kept)} MoE layers by "
                f"**{get_criterion(plan.criterion).label}** at ratio {plan.compression_ratio:.0%}")
    return (f"{plan.num_pruned} of {plan.num_experts} experts pruned in each of {len(plan.kept)} MoE layers "
            f"by **{get_criterion(plan.criterion).label}** at ratio {plan.compression_ratio:.0%}; {plan.num_kept} kept"
            + (f"; {prot} super experts protected" if prot else ""))


def calibration_line(stats: ExpertStats) -> str:
    """'builtin:toy-* (80 samples, 4,622 tokens)': which data the statistics came from."""
    cal = stats.calibration or {}
    spec = cal.get("spec") or "uploaded statistics"
    samples = cal.get("samples")
    return f"{spec} ({f'{samples:,} samples, ' if samples else ''}{stats.num_tokens:,} tokens)"


def plan_caption(plan: PruningPlan, stats: ExpertStats | None = None) -> str:
    """What a result measured, in one line: 'REAP 75% — 8 of 32 experts kept per layer; scores from
    all calibration categories of builtin:toy-* (80 samples, 4,622 tokens)'."""
    scope = (f"scores from calibration category {', '.join(plan.categories)} only" if plan.categories
             else "scores from all calibration categories")
    prot = sum(len(p) for p in plan.protected) if plan.protected else 0
    return (f"{get_criterion(plan.criterion).label} {plan.compression_ratio:.0%} — {plan.num_kept} of "
            f"{plan.num_experts} experts kept per layer; {scope}"
            + (f" of {calibration_line(stats)}" if stats is not None else "")
            + (f"; {prot} super experts protected" if prot else ""))
