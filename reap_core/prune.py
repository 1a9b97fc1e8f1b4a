"""Stage 6b — physical pruning of a model in memory, and saving it as a loadable folder.

Slicing keeps the plan's experts (ascending ids) in every per-expert tensor the family's adapter
lists (router rows and biases, selection biases, scales, the fused expert tensors) of every MoE
layer, then updates the expert counters in the modules and config.
The folder is written to a temporary sibling and renamed at the end (reap_core.atomic), so an
interrupted save never leaves a half model under the final name nor touches an earlier one.
reap_core.export writes the complete, verified folder for publishing (streaming or in memory).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np

from .atomic import atomic_folder, check_output_folder
from .masking import check_plan_fits
from .model import LoadedModel
from .plan import PruningPlan
from .saliency import all_scores
from .stats import ExpertStats

SCORES_FILE = "reap_scores.json"
PLAN_FILE = "reap_plan.json"


def slice_model(loaded: LoadedModel, plan: PruningPlan) -> None:
    """Remove the plan's pruned experts from `loaded.model`, in place."""
    check_plan_fits(loaded, plan)
    for row, (_, layer) in enumerate(loaded.adapter.moe_layers(loaded.model)):
        loaded.adapter.slice_layer(layer, list(plan.kept[row]))
    loaded.adapter.set_num_experts(loaded.model.config, plan.num_kept)


def scores_document(stats: ExpertStats, plan: PruningPlan) -> dict:
    """reap_scores.json: every criterion's scores, kept and pruned experts per layer, calibration."""
    scores = all_scores(stats, seed=plan.seed)
    layers = []
    for row, layer_idx in enumerate(plan.layer_indices):
        layers.append({"layer": int(layer_idx),
                       "scores": {name: [float(x) for x in np.asarray(s[row])] for name, s in scores.items()},
                       "kept": list(plan.kept[row]), "pruned": list(plan.pruned(row)),
                       "protected": list(plan.protected[row]) if plan.protected else []})
    return {"criterion": plan.criterion, "compression_ratio": plan.compression_ratio,
            "num_experts": plan.num_experts, "num_experts_kept": plan.num_kept, "top_k": plan.top_k,
            "layers": layers,
            "calibration": {**stats.calibration, "categories": stats.categories,
                            "tokens_per_category": dict(zip(stats.categories, stats.tokens_per_category))}}


def save_pruned(loaded: LoadedModel, plan: PruningPlan, stats: ExpertStats, out_dir: str | Path,
                in_place: bool = False) -> Path:
    """Slice (a copy of, unless in_place) the model and save a complete folder at `out_dir`."""
    check_output_folder(out_dir, PLAN_FILE)
    target = loaded if in_place else LoadedModel(**{**loaded.__dict__, "model": copy.deepcopy(loaded.model)})
    slice_model(target, plan)
    with atomic_folder(out_dir, marker=PLAN_FILE) as tmp:
        target.model.save_pretrained(tmp)
        for files in (loaded.processor, loaded.tokenizer):
            if files is not None:
                files.save_pretrained(tmp)
        (tmp / SCORES_FILE).write_text(json.dumps(scores_document(stats, plan), indent=1))
        (tmp / PLAN_FILE).write_text(plan.to_json())
    return Path(out_dir)
