"""Stage 7 — export: a PruningPlan + the source model in, a complete, verified, self-describing folder out.

Steps, as in mergekit (a plan, executed separately) and safetensors' convert (reload and compare
before publishing), run by `export_pruned`, which the CLI and the app call:
  plan_export    -> ExportPlan: where every tensor comes from, which file it goes to (the shard
                 layout), the config.json and the card's inputs. Every check that can fail fails
                 here, before a byte is written.
  write_export   the weights, config, side files, scores, plan, statistics and heatmap.
  verify_export  reloaded with the Auto classes, the folder's logits on probe prompts must match the
                 original model with the pruned experts masked out of the router; or, with
                 verify="layerwise" (reap_core.verify_layers), layer by layer against the source on disk,
                 two decoder layers in memory instead of a second copy of the model: what is left to
                 original model with the pruned experts masked out of the router.
  write_card     the recipe and the model card, last: they report the verification.

Sources: `streaming` reads the source checkpoint's safetensors files (local folder or Hub snapshot)
a piece at a time: memory stays a few chunks whatever the model size (a 52 GB Gemma 4 exports on a
laptop); the default whenever the files exist. `in-memory` slices a model already loaded. Both feed
one shard layout and writer (reap_core.shards): the same plan gives byte-identical weights.

The folder: sliced safetensors shards + index, config.json with only `num_experts` changed, the
source's generation config, tokenizer, processor and chat template files, README.md (model card),
reap_recipe.json, reap_scores.json, reap_plan.json, reap_stats.npz and reap_saliency.png. It is
built in a temporary sibling and renamed at the end (reap_core.atomic): a failed or interrupted
export leaves nothing under the final name and never touches an earlier export.
"""

from __future__ import annotations

import copy
import gc
import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from .adapters import MoEAdapter, find_adapter
from .atomic import atomic_folder, check_output_folder
from .card import (CARD_FILE, HEATMAP_FILE, RECIPE_FILE, STATS_FILE, CardInputs, build_recipe, card_inputs,
                   model_card)
from .errors import ReapError
from .heatmap_png import heatmap_png
from .model import LoadedModel, load_model, resolve_model_path
from .plan import PruningPlan
from .prune import PLAN_FILE, SCORES_FILE, scores_document
from .saliency import MERGE_PREFIX, compute_scores
from .shards import (INDEX_FILE, SINGLE_FILE, CheckpointSource, ModelSource, Selection, ShardLayout, TensorSource,
                     plan_shards, read_header, write_checkpoint)
from .stats import ExpertStats

if TYPE_CHECKING:
    from .merging import MergedModel

Progress = Callable[[float, str], None]

DEFAULT_MAX_SHARD_BYTES = 5 * 10**9
PROBE_PROMPTS = ("The capital of France is", "def fibonacci(n):\n    ", "Q: What is 17 + 25?\nA:",
                 "Mixture-of-experts models route each token to")
# max |Δ logits| allowed, relative to max(1, max |logit|): masking and slicing differ only in
# floating-point summation order (measured ~1e-6 in float32).
TOLERANCE = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 2e-2}
# Files of the source folder never copied: weights in any format (they would be unpruned), and
# files the export writes itself.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".onnx_data",
                   ".gguf", ".npz", ".pkl")
REWRITTEN = {"config.json", INDEX_FILE, "pytorch_model.bin.index.json", CARD_FILE, ".gitattributes",
             SCORES_FILE, PLAN_FILE, RECIPE_FILE, HEATMAP_FILE, STATS_FILE}
_HUB_CACHE_PATH = re.compile(r"models--([^/]+)--([^/]+)/snapshots/[^/]+/?$")


class ExportError(ReapError):
    """The export cannot be done, or its result did not match the original (nothing was published)."""


@dataclass
class ExportResult:
    path: Path
    files: list[str]
    max_abs_diff: float | None       # None: not verified
    tolerance: float | None
    seconds: float
    bytes: int
    streaming: bool
    verification: dict = field(default_factory=dict)


# --- sources ----------------------------------------------------------------------------------

def _is_hub_id(path: str) -> bool:
    return not Path(path).exists() and path.count("/") == 1 and not path.startswith((".", "/", "~"))


def source_folder(model_id: str, token: str | None = None, download: bool = False) -> Path | None:
    """The folder holding a model's files: a local folder, or its Hub snapshot (cached, or
    downloaded when `download`). None if there is none."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    from .hub import hub_failures

    path = resolve_model_path(model_id)
    if Path(path).is_dir():
        return Path(path)
    if not _is_hub_id(path):
        return None
    try:
        return Path(snapshot_download(path, token=token, local_files_only=True))
    except HFValidationError:                # not a Hub id after all: the loader says so when asked to load it
        return None
    except LocalEntryNotFoundError:          # not in the cache (what local_files_only raises for it)
        if not download:
            return None
    try:
        return Path(snapshot_download(path, token=token))
    except (OSError, *hub_failures()) as exc:   # Hub, network, disk (named in the message); a bug: a traceback
        raise ExportError(f"could not download '{path}' from the Hub: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}") from None


def has_safetensors(folder: Path | None) -> bool:
    return folder is not None and ((folder / INDEX_FILE).is_file() or (folder / SINGLE_FILE).is_file())


def hub_id_of(model_id: str, folder: Path | None) -> str | None:
    """The Hub repo a model came from, for the card's base_model (None for a plain local folder)."""
    if _is_hub_id(model_id):
        return model_id
    match = _HUB_CACHE_PATH.search(str(folder or ""))
    return f"{match.group(1)}/{match.group(2)}" if match else None


# --- building blocks --------------------------------------------------------------------------

def output_label(plan: PruningPlan) -> str:
    """What a folder name calls a plan: its criterion, or its merge method ('reap', 'ream')."""
    return plan.criterion.removeprefix(MERGE_PREFIX)


def new_output_dir(root: Path, model: str, label: str, ratio: float) -> Path:
    """<root>/<model>-<label>-<percent>, or -2, -3, … when taken: a default never replaces earlier work
    (the CLI's prune, export and merge folders and the app's exports)."""
    base = root / f"{Path(model.rstrip('/')).name or 'model'}-{label}-{round(ratio * 100)}"
    path, n = base, 2
    while path.exists():
        path, n = base.with_name(f"{base.name}-{n}"), n + 1
    return path


def expert_selection(adapter: MoEAdapter, plan: PruningPlan, names: set[str]) -> Selection:
    """What the export takes from a checkpoint with these tensor names, as it stores experts: tensors
    holding every expert of a layer are sliced; one-expert tensors (`…experts.{j}.…`, as most
    families are on the Hub) are dropped for pruned j and renumbered for kept j (kept[n] -> n).
    Refuses a layer where neither form is found: its names are not the ones the adapter knows."""
    sliced, renamed, dropped = {}, {}, set()
    for row, layer in enumerate(plan.layer_indices):
        fused = {k: axis for k, axis in adapter.checkpoint_expert_keys(layer).items() if k in names}
        new_id = {old: new for new, old in enumerate(plan.kept[row])}
        per_expert = adapter.checkpoint_expert_lists(layer)
        ids_seen = set()
        for name in names:
            match = per_expert.match(name)
            if match is None:
                continue
            head, old, tail = match.group(1), int(match.group(2)), match.group(3)
            ids_seen.add(old)
            if old in new_id:
                renamed[name] = f"{head}{new_id[old]}{tail}"
            else:
                dropped.add(name)
        # the router is always one tensor over all experts; the experts are one-expert tensors or more of those
        if not fused or (not ids_seen and len(fused) < 2):
            wanted = ", ".join(n for n, _ in adapter.layout.expert_tensors)
            raise ExportError(f"layer {layer}: no expert tensors found in the checkpoint (looked for {wanted}, and one "
                              f"tensor per expert under {', '.join(adapter.layout.checkpoint_expert_lists) or '-'}); "
                              f"its key names are not the ones this {adapter.layout.family} adapter knows — "
                              f"refusing to export unpruned weights")
        if ids_seen and ids_seen != set(range(plan.num_experts)):
            raise ExportError(f"layer {layer}: the checkpoint has one-expert tensors for {len(ids_seen)} expert ids, "
                              f"the plan is for {plan.num_experts} experts: these statistics / this plan belong to "
                              f"another model")
        sliced.update({k: (axis, tuple(plan.kept[row])) for k, axis in fused.items()})
    return Selection(sliced=sliced, renamed=renamed, dropped=frozenset(dropped))


def _check_expert_axes(source: TensorSource, plan: PruningPlan) -> None:
    for e in (e for e in source.entries if e.kept is not None):
        n = source.source_shapes[e.name][e.axis]
        if n != plan.num_experts:
            raise ExportError(f"{e.name} holds {n} experts, but the plan is for {plan.num_experts}: "
                              f"these statistics / this plan belong to another model")


def export_state_dict(model: torch.nn.Module, overrides: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The model's tensors under their checkpoint names and in the checkpoint's format (transformers'
    own reversal of what it fused or renamed at load: one tensor per expert for most families), as
    save_pretrained writes them; tied copies (lm_head = embeddings) left out, as save_pretrained does.
    `overrides`: state_dict name -> tensor to write instead (merged experts)."""
    from transformers.core_model_loading import revert_weight_conversion

    state = model.state_dict()
    state.update(overrides or {})
    tied = getattr(model, "_tied_weights_keys", None) or {}
    for name, target in (tied.items() if isinstance(tied, dict) else []):
        if name in state and target in state and state[name].data_ptr() == state[target].data_ptr():
            del state[name]
    return revert_weight_conversion(model, state)


def pruned_config(config: dict, adapter: MoEAdapter, num_kept: int, attribute_map: dict | None = None) -> dict:
    """The source config.json with the expert count changed, and nothing else. The count is written
    under whichever name the file uses: the family's key or an alias transformers maps to it
    (Qwen3-MoE's `num_experts` is saved as `num_local_experts` by transformers 5)."""
    config = copy.deepcopy(config)
    attr = adapter.layout.text_config_attr
    target = config[attr] if attr and isinstance(config.get(attr), dict) else config
    key = adapter.layout.num_experts_key
    aliases = {key} | {a for a, b in (attribute_map or {}).items() if key in (a, b)} \
        | {b for a, b in (attribute_map or {}).items() if a == key}
    present = [k for k in aliases if k in target]
    if not present:
        raise ExportError(f"config.json has no '{key}' to update")
    for k in present:
        target[k] = int(num_kept)
    return config


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def copy_side_files(src: Path, dst: Path) -> list[str]:
    """Tokenizer, processor, chat template, generation config, licence...: every top-level file of
    the source folder that is neither weights nor something the export writes itself."""
    copied = []
    for f in sorted(src.iterdir()):
        if f.is_file() and f.name not in REWRITTEN and not f.name.endswith(WEIGHT_SUFFIXES) \
                and not f.name.startswith("."):
            shutil.copy2(f, dst / f.name)
            copied.append(f.name)
    return copied


def _save_side_files(loaded: LoadedModel, dst: Path) -> None:
    for obj in (loaded.processor, loaded.tokenizer, getattr(loaded.model, "generation_config", None)):
        if obj is not None:
            obj.save_pretrained(dst)
    (dst / "config.json").unlink(missing_ok=True)   # some processors write one; ours comes next


# --- 1. plan ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ExportPlan:
    """Everything an export will write, decided and checked before anything is written.

    `tensors` is the reader the weights come from (source files as byte ranges, or the model in
    memory); it opens nothing until written. `layout` says which output tensor (name, dtype, sliced
    shape, kept expert ids) goes to which shard file, and the index."""

    model_id: str
    out_dir: Path
    pruning: PruningPlan
    stats: ExpertStats
    streaming: bool
    verify: bool
    layerwise: bool                  # verify layer by layer from disk (no model copy in memory)
    folder: Path | None              # the source's files (side files are copied from here)
    loaded: LoadedModel | None       # the original in memory: in-memory source, and verification
    adapter: MoEAdapter
    tensors: TensorSource
    layout: ShardLayout
    config_json: dict                # config.json as written: only the expert count changed
    weight_dtype: str                # of the expert tensors, e.g. "BF16"
    base_model: str | None
    max_shard_bytes: int
    card: CardInputs
    merged: "MergedModel | None" = None   # a merge: the merged experts written in the representatives' slots


def plan_export(source: str | LoadedModel, plan: PruningPlan, stats: ExpertStats, out_dir: str | Path, *,
                loaded: LoadedModel | None = None, streaming: bool | None = None, verify: bool | None = None,
                eval_results: dict | None = None, repo_id: str | None = None, base_model: str | None = None,
                max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, token: str | None = None,
                progress: Progress | None = None, merged: "MergedModel | None" = None) -> ExportPlan:
    """The export of `plan` as an ExportPlan (arguments as in export_pruned). Reads configs and
    safetensors headers, may download the source snapshot or load the model, and writes nothing."""
    report = progress or (lambda fraction, message: None)
    out_dir = check_output_folder(out_dir, PLAN_FILE)  # a bad folder fails now, not after the download
    if merged is not None:
        # merged experts are computed from the weights in memory; the rest is the pruned export's path
        if not isinstance(source, LoadedModel) and loaded is None:
            raise ExportError("a merged export is written from the model in memory: load the model first")
        if verify == "layerwise":
            raise ExportError("layer-by-layer verification compares with the source on disk; a merged export is "
                              "verified against the merged model in memory instead")
        streaming = False
    if isinstance(source, LoadedModel):
        loaded = loaded or source
        model_id = source.model_id
    else:
        model_id = source
    read_from = Path(loaded.read_from) if loaded is not None and loaded.read_from else None
    if read_from is not None and read_from.is_dir():
        folder = read_from  # the files the loaded weights came from: never model_id resolved anew on this disk
    else:
        folder = source_folder(model_id, token=token,
                               download=streaming is not False and not isinstance(source, LoadedModel))
    if streaming is None:
        streaming = has_safetensors(folder)
    if streaming and not has_safetensors(folder):
        raise ExportError(f"'{model_id}' has no safetensors checkpoint on disk to stream from; "
                          f"export from the model in memory instead (--in-memory)")
    if not streaming and loaded is None:
        report(0.0, f"loading {model_id}")
        loaded = load_model(model_id, dtype="auto", token=token)
    layerwise = verify == "layerwise"
    if layerwise and not (streaming and has_safetensors(folder)):
        raise ExportError("layer-by-layer verification reads the source's safetensors files: export streaming "
                          "from a folder or Hub snapshot that has them")
    if verify and not layerwise and loaded is None:
        report(0.0, f"loading {model_id} for verification")
        loaded = load_model(model_id, dtype="auto", token=token)
    verify = loaded is not None if verify is None else bool(verify)

    if folder is not None and (folder / "config.json").is_file():
        config_dict = json.loads((folder / "config.json").read_text())
    else:
        config_dict = json.loads(loaded.config.to_json_string(use_diff=True))
    if loaded is not None:
        adapter, config = loaded.adapter, loaded.config
    else:
        from .model import load_config
        config = load_config(str(folder))
        adapter = find_adapter(config)
    stats.check_matches(adapter.moe_layer_indices(config), adapter.num_experts(config), adapter.top_k(config))
    if adapter.num_experts(config) != plan.num_experts:
        raise ExportError(f"the plan is for {plan.num_experts} experts per layer, the model has "
                          f"{adapter.num_experts(config)}")

    if streaming:
        names = set(json.loads((folder / INDEX_FILE).read_text())["weight_map"]) if (folder / INDEX_FILE).is_file() \
            else set(read_header(folder / SINGLE_FILE)[0])
        tensors: TensorSource = CheckpointSource(folder, expert_selection(adapter, plan, names))
    else:
        from .merging import export_overrides
        state = export_state_dict(loaded.model, export_overrides(loaded, merged) if merged is not None else None)
        tensors = ModelSource(state, expert_selection(adapter, plan, set(state)))
    _check_expert_axes(tensors, plan)
    weight_dtype = next(e.dtype for e in tensors.entries if e.kept is not None or e.source is not None)
    is_multimodal = config_dict.get("vision_config") is not None
    card = card_inputs(config, adapter, plan, weight_dtype, repo_name=repo_id or out_dir.name, source_folder=folder,
                       multimodal=is_multimodal, eval_results=eval_results)
    return ExportPlan(model_id=model_id, out_dir=out_dir, pruning=plan, stats=stats, streaming=bool(streaming),
                      verify=bool(verify), layerwise=layerwise, folder=folder, loaded=loaded, adapter=adapter, tensors=tensors,
                      layout=plan_shards(tensors.entries, max_shard_bytes),
                      config_json=pruned_config(config_dict, adapter, plan.num_kept,
                                                getattr(adapter.text_config(config), "attribute_map", None)),
                      weight_dtype=weight_dtype,
                      base_model=base_model or hub_id_of(model_id, folder), max_shard_bytes=max_shard_bytes,
                      card=card, merged=merged)


# --- 2. write ---------------------------------------------------------------------------------

def write_export(export: ExportPlan, folder: Path, progress: Progress | None = None) -> None:
    """Write everything but the card and recipe into `folder` (an empty temporary folder)."""
    report = progress or (lambda fraction, message: None)
    plan, stats = export.pruning, export.stats
    write_checkpoint(folder, export.tensors, export.layout, report)
    _write_json(folder / "config.json", export.config_json)
    if export.folder is not None:
        copy_side_files(export.folder, folder)
    else:
        _save_side_files(export.loaded, folder)
    (folder / SCORES_FILE).write_text(json.dumps(scores_document(stats, plan), indent=1))
    (folder / PLAN_FILE).write_text(plan.to_json())
    stats.save(folder / STATS_FILE)
    criterion = "reap" if export.merged is not None else plan.criterion   # a merge's map: REAP scores, representatives kept
    scores = compute_scores(stats, criterion, categories=list(plan.categories) if plan.categories else None,
                            seed=plan.seed)
    (folder / HEATMAP_FILE).write_bytes(heatmap_png(scores, plan.pruned_mask()))


# --- 3. verify --------------------------------------------------------------------------------

def verify_export(folder: Path, loaded: LoadedModel, plan: PruningPlan,
                  prompts: tuple[str, ...] = PROBE_PROMPTS, merged: "MergedModel | None" = None) -> dict:
    """Reload `folder` with the Auto classes and compare its logits with the masked original (with
    `merged`: the merged model in memory). Returns {max_abs_diff, tolerance, dtype, prompts}; ExportError
    above the tolerance."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    from .merging import compressed_view

    try:
        model, info = AutoModelForCausalLM.from_pretrained(folder, dtype=loaded.dtype, output_loading_info=True)
    except (MemoryError, torch.OutOfMemoryError):
        raise ExportError("not enough memory to reload the export for verification (it needs as much as the pruned "
                          "model): export without verification (CLI: --no-verify), or on a machine with more memory; "
                          "nothing was written") from None
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:   # a folder that does not load,
        raise ExportError(f"the exported folder does not load with transformers: {exc}") from None   # and why
    try:
        missing = [k for k in info.get("missing_keys", []) if "lm_head" not in k]
        if missing or info.get("mismatched_keys"):
            raise ExportError(f"the export reloads with {len(missing)} missing and "
                              f"{len(info.get('mismatched_keys') or [])} mismatched weights")
        if type(model).__name__ != type(loaded.model).__name__:
            raise ExportError(f"the export reloads as {type(model).__name__}, not {type(loaded.model).__name__}")
        model.to(loaded.input_device).eval()
        loaded.adapter.prepare(model)
        if loaded.adapter.num_experts(model.config) != plan.num_kept:
            raise ExportError("the reloaded config does not have the pruned expert count")
        worst, scale = 0.0, 1.0
        with torch.no_grad():
            for prompt in prompts:
                ids = loaded.tokenizer(prompt, return_tensors="pt").input_ids.to(loaded.input_device)
                with compressed_view(loaded, merged if merged is not None else plan):
                    ref = loaded.model(input_ids=ids).logits.float()
                out = model(input_ids=ids).logits.float()
                worst = max(worst, (ref - out).abs().max().item())
                scale = max(scale, ref.abs().max().item())
    finally:
        del model
        gc.collect()
    relative = TOLERANCE.get(loaded.dtype, 2e-2)
    tolerance = relative * scale
    result = {"max_abs_diff": worst, "tolerance": tolerance, "relative_tolerance": relative, "logit_scale": scale,
              "dtype": str(loaded.dtype).replace("torch.", ""), "prompts": len(prompts),
              "against": "the merged model in memory" if merged is not None else "the masked original"}
    if not worst <= tolerance:
        raise ExportError(f"verification failed: the exported model's logits differ from the masked original by "
                          f"up to {worst:.3g} (tolerance {tolerance:.2g} in {result['dtype']}); nothing was written")
    return result


def describe_verification(verification: dict | None) -> str:
    """The one wording of the check, for the app, the CLI and the card: the measured difference, the
    tolerance it was held to, and how that tolerance was made (relative x the largest |logit|)."""
    if not verification or verification.get("max_abs_diff") is None:
        return "not verified"
    v = verification
    how = ""
    if v.get("relative_tolerance") is not None:
        how = (f" = {v['relative_tolerance']:.0e} × the largest |logit| ({v['logit_scale']:.3g})"
               if v.get("logit_scale", 1.0) > 1.0 else f" = {v['relative_tolerance']:.0e} (logits below 1)")
    layers = (f"; layer by layer from disk, largest difference of one layer on the same inputs "
              f"{max(v['layers']):.2e}" if v.get("layers") else "")
    return (f"max |Δ logits| vs {v.get('against', 'the masked original')} = {v['max_abs_diff']:.2e}, tolerance {v['tolerance']:.2e}{how}, "
            f"{v.get('dtype', '?')}, {v.get('prompts', '?')} probe prompts{layers}")


# --- 4. describe ------------------------------------------------------------------------------

def write_card(export: ExportPlan, folder: Path, verification: dict) -> None:
    """reap_recipe.json and README.md, last: both report the verification."""
    export_info = {"path": "streaming" if export.streaming else "in-memory", "weights_dtype": export.weight_dtype,
                   "max_shard_bytes": export.max_shard_bytes, "verification": verification or None}
    recipe = build_recipe(export.pruning, export.stats, gate_definition=export.adapter.layout.gate_definition,
                          base_model=export.base_model, source=export.model_id, export=export_info)
    _write_json(folder / RECIPE_FILE, recipe)
    model_card(export.card, recipe).save(folder / CARD_FILE)


# --- the export -------------------------------------------------------------------------------

def export_pruned(source: str | LoadedModel, plan: PruningPlan, stats: ExpertStats, out_dir: str | Path, *,
                  loaded: LoadedModel | None = None, streaming: bool | None = None, verify: bool | None = None,
                  eval_results: dict | None = None, repo_id: str | None = None, base_model: str | None = None,
                  max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, token: str | None = None,
                  progress: Progress | None = None, merged: "MergedModel | None" = None) -> ExportResult:
    """Write the pruned model as a complete folder at `out_dir`: plan, write, verify, describe.

    source     Hub id / local folder (streaming from its safetensors), or a LoadedModel.
    loaded     the original model in memory, for verification (defaults to `source` if loaded).
    streaming  None = streaming whenever the source's safetensors files are on disk (or, for a Hub
               id, downloadable); False = slice the loaded model in memory.
    verify     None = verify when a loaded model is at hand; "layerwise" = layer by layer from disk
               (streaming only; about two decoder layers of memory); True = always (loads the source if
               needed: as much memory as the model); False = skip (the card says so).
    eval_results  optional {task: {column: value}} rendered in the card (see card.eval_table).
    """
    start = time.perf_counter()
    report = progress or (lambda fraction, message: None)
    export = plan_export(source, plan, stats, out_dir, loaded=loaded, streaming=streaming, verify=verify,
                         eval_results=eval_results, repo_id=repo_id, base_model=base_model,
                         max_shard_bytes=max_shard_bytes, token=token, progress=report, merged=merged)
    with atomic_folder(export.out_dir, marker=PLAN_FILE) as tmp:
        write_export(export, tmp, lambda f, m: report(0.8 * f, m))
        verification: dict = {}
        if export.layerwise:
            from .verify_layers import LayerMismatch, verify_layerwise
            report(0.8, "verifying layer by layer: each exported layer against the masked source's, from disk")
            try:
                verification = verify_layerwise(str(export.folder), tmp, plan, PROBE_PROMPTS, TOLERANCE)
            except LayerMismatch as exc:
                raise ExportError(str(exc)) from None
        elif export.verify:
            report(0.8, "verifying: reloading the export and comparing logits with the masked original")
            verification = verify_export(tmp, export.loaded, plan, merged=export.merged)
        report(0.95, "writing the model card and the recipe")
        write_card(export, tmp, verification)
        all_files = sorted(p.name for p in tmp.iterdir())
        total_bytes = sum(p.stat().st_size for p in tmp.iterdir())
    report(1.0, f"exported to {export.out_dir}")
    return ExportResult(path=export.out_dir, files=all_files, max_abs_diff=verification.get("max_abs_diff"),
                        tolerance=verification.get("tolerance"), seconds=time.perf_counter() - start,
                        bytes=total_bytes, streaming=export.streaming, verification=verification)


def export_merged(loaded: LoadedModel, merged: "MergedModel", stats: ExpertStats, out_dir: str | Path,
                  **options) -> ExportResult:
    """Write a merged model (reap_core.merging) as a complete folder: the representatives' slots hold the
    merged experts; the recipe records the method, clusters and weights; verified against the merged
    model in memory. Options as in export_pruned (written from memory: never streaming)."""
    return export_pruned(loaded, merged.plan.as_pruning_plan(), stats, out_dir, merged=merged, **options)
