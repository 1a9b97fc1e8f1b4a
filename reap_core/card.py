"""The exported folder describes itself: a recipe (JSON, to redo or change the prune) and a model
card (README.md: Hub metadata plus a body written for people).

Both are built from the same plain data the export used (plan, statistics, sizes), never from UI
state. The card's YAML goes through huggingface_hub.ModelCardData, so it always parses on the Hub.
"""

from __future__ import annotations

import platform
import shlex
import time
from dataclasses import dataclass
from typing import Any

from . import __version__
from .plan import PruningPlan
from .saliency import get_criterion
from .sizing import ModelSize
from .stats import ExpertStats

RECIPE_FILE = "reap_recipe.json"
HEATMAP_FILE = "reap_saliency.png"
STATS_FILE = "reap_stats.npz"
CARD_FILE = "README.md"
# The ICLR 2026 paper's title; the method inside it is "Router-weighted Expert Activation Pruning".
CITATION = """@inproceedings{lasby2026reap,
  title     = {{REAP} the Experts: Why Pruning Prevails for One-Shot {MoE} Compression},
  author    = {Lasby, Mike and Lazarevich, Ivan and Sinnadurai, Nish and Lie, Sean and Ioannou, Yani and Thangarasa, Vithursan},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2026},
  url       = {https://arxiv.org/abs/2510.13999}
}"""


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"reap_core": __version__, "python": platform.python_version()}
    for name in ("torch", "transformers", "safetensors", "huggingface_hub", "numpy"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def build_recipe(plan: PruningPlan, stats: ExpertStats, *, gate_definition: str, base_model: str | None,
                 source: str, export: dict) -> dict:
    """reap_recipe.json: everything needed to redo the prune, or redo it with one thing changed."""
    calib = stats.calibration
    protect = bool(plan.protected)
    factor = plan.extra.get("super_expert_factor")
    model = shlex.quote(str(base_model or source))  # spec and names come from users: quoted, never run as code
    redo = [f"python -m reap_core calibrate --model {model} --calibration {shlex.quote(str(calib.get('spec', '?')))}"
            f" --max-tokens {shlex.quote(str(calib.get('max_tokens', '?')))} --out reap_stats.npz",
            f"python -m reap_core export --model {model} --stats reap_stats.npz"
            f" --ratio {plan.compression_ratio:g} --criterion {plan.criterion}"
            + (" --protect-super-experts" if protect else "") + (f" --seed {plan.seed}" if plan.seed else "")
            + " --out pruned"]
    return {
        "method": "REAP expert pruning (Lasby et al., ICLR 2026, arXiv 2510.13999), routed-token statistics",
        "base_model": base_model, "source": source,
        "criterion": plan.criterion, "criterion_definition": get_criterion(plan.criterion).definition,
        "compression_ratio": plan.compression_ratio,
        "num_experts": plan.num_experts, "num_experts_kept": plan.num_kept, "top_k": plan.top_k,
        "selection": "the floor(E * ratio) lowest-scoring experts of every MoE layer are removed (same count in "
                     "every layer); ties go to the lower expert id",
        "gate_definition": gate_definition,
        "super_expert_protection": {"enabled": protect, "factor": factor,
                                    "rule": "max |activation| >= factor x the layer's median" if protect else None,
                                    "protected_per_layer": [list(p) for p in plan.protected] if protect else None},
        "seed": plan.seed,
        "categories_used": list(plan.categories) if plan.categories else None,
        "calibration": {"spec": calib.get("spec"), "fingerprint": calib.get("fingerprint"),
                        "max_tokens_per_sample": calib.get("max_tokens"), "samples": calib.get("samples"),
                        "tokens": stats.num_tokens, "truncated_samples": calib.get("truncated"),
                        "tokens_per_category": dict(zip(stats.categories, stats.tokens_per_category)),
                        "samples_per_category": {c: v.get("samples") for c, v in (calib.get("summary") or {}).items()}},
        "layers": list(plan.layer_indices),
        "kept_experts": [list(k) for k in plan.kept],
        "export": export,
        "versions": package_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "redo": redo,
    }


@dataclass
class CardInputs:
    """What the card shows beside the recipe."""

    repo_name: str
    family: str
    pipeline_tag: str
    license: str | None
    original: ModelSize
    pruned: ModelSize
    is_multimodal: bool
    eval_results: dict | None = None


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def eval_table(results: dict) -> str:
    """Render evaluation results: {task: {column: value}} (e.g. original / pruned) or {task: value}.

    An optional "_description" key is printed above the table (benchmark, settings, hardware)."""
    description = results.get("_description", "")
    rows = {k: v for k, v in results.items() if not k.startswith("_")}
    columns: list[str] = []
    for v in rows.values():
        for c in (v if isinstance(v, dict) else {"score": v}):
            if c not in columns:
                columns.append(c)
    body = _table(["Task"] + columns, [[task] + [_fmt((v if isinstance(v, dict) else {"score": v}).get(c, "–"))
                                                  for c in columns] for task, v in rows.items()])
    return (description + "\n\n" + body) if description else body


def metadata(inputs: CardInputs, base_model: str | None) -> str:
    from huggingface_hub import ModelCardData

    tags = ["moe", "pruning", "reap", "expert-pruning", inputs.family, "mixture-of-experts"]
    data = ModelCardData(base_model=base_model, library_name="transformers", pipeline_tag=inputs.pipeline_tag,
                         license=inputs.license, tags=tags)
    return data.to_yaml()


def render_card(inputs: CardInputs, recipe: dict) -> str:
    base = recipe.get("base_model")
    src = base or recipe["source"]
    o, p = inputs.original, inputs.pruned
    calib = recipe["calibration"]
    protect = recipe["super_expert_protection"]
    verification = recipe["export"].get("verification") or {}
    total_tokens = max(sum(calib["tokens_per_category"].values()), 1)
    size_rows = [[k, a, b] for (k, a), b in zip(o.as_row().items(), p.as_row().values())]
    calib_rows = [[c, calib["samples_per_category"].get(c, "–"), n, f"{n / total_tokens:.1%}"]
                  for c, n in calib["tokens_per_category"].items()]
    config_rows = [
        ["Criterion", f"`{recipe['criterion']}`: {recipe['criterion_definition']}"],
        ["Compression ratio", f"{recipe['compression_ratio']:g} ({recipe['num_experts'] - recipe['num_experts_kept']} "
                              f"of {recipe['num_experts']} experts removed in each of {len(recipe['layers'])} MoE layers)"],
        ["Experts kept per layer", recipe["num_experts_kept"]],
        ["Experts per token (top-k)", recipe["top_k"]],
        ["Gate used in the score", recipe["gate_definition"]],
        ["Super-expert protection", f"on (factor {protect['factor']})" if protect["enabled"] else "off"],
        ["Seed", recipe["seed"]],
        ["Calibration fingerprint", f"`{calib['fingerprint']}`"],
        ["Tool", f"REAP Studio `reap_core` {recipe['versions']['reap_core']} "
                 f"(transformers {recipe['versions'].get('transformers', '?')}, torch {recipe['versions'].get('torch', '?')})"],
    ]
    if verification.get("max_abs_diff") is not None:
        check = (f"Reloaded with the Auto classes and compared with the original model with the pruned experts "
                 f"masked out of the router, on {verification['prompts']} probe prompts: max |Δ logits| = "
                 f"{verification['max_abs_diff']:.2e} ({verification['dtype']}, tolerance {verification['tolerance']:.1e}).")
    else:
        check = "The export was not verified against the original model (verification was turned off)."
    loader = "AutoModelForImageTextToText" if inputs.is_multimodal else "AutoModelForCausalLM"
    parts = [
        "---", metadata(inputs, base).strip(), "---", "",
        f"# {inputs.repo_name}", "",
        (f"[{base}](https://huggingface.co/{base})" if base else f"`{src}`") + f" with **{recipe['num_experts'] - recipe['num_experts_kept']} of its "
        f"{recipe['num_experts']} experts removed in every MoE layer** by expert pruning with REAP "
        f"(Router-weighted Expert Activation Pruning). The remaining weights are the original ones, unchanged: no "
        f"fine-tuning, no merging. It loads in stock transformers and vLLM like the original"
        + (", vision tower included." if inputs.is_multimodal else "."), "",
        _table(["", "Original", "Pruned"], size_rows), "",
        "Active parameters per token change little: the router still picks the same number of experts per token, "
        "from a smaller pool. Sizes are computed from the config (parameters x bytes per parameter of the format).", "",
        "## How it was made", "",
        f"1. Calibration: {calib['tokens']} tokens ({calib['samples']} samples, at most {calib['max_tokens_per_sample']} "
        f"tokens each) were run through the original model once, recording for each expert the tokens routed to it, "
        f"its gate and the norm of its output.",
        f"2. Saliency: each expert got the score `{recipe['criterion']}` ({recipe['criterion_definition']}).",
        "3. Pruning: the lowest-scoring experts of every layer were removed: their router rows, per-expert scales and "
        "weights are sliced out of the checkpoint, and `num_experts` in config.json is updated.",
        f"4. Verification: {check}", "",
        "### Calibration data", "",
        f"Source: `{calib['spec']}`.", "",
        _table(["Category", "Samples", "Tokens", "Share"], calib_rows), "",
        "### Pruning configuration", "",
        _table(["Setting", "Value"], config_rows), "",
        "### Expert saliency", "",
        f"![Expert saliency per layer]({HEATMAP_FILE})", "",
        "Rows are MoE layers, columns experts. Blue = kept, orange = pruned; darker = higher score relative to the "
        "best expert of the same layer.", "",
        "## Evaluation", "",
        eval_table(inputs.eval_results) if inputs.eval_results else
        "No evaluation results yet. Pruning removes knowledge the calibration data did not exercise: evaluate on "
        "your own tasks before relying on this model.", "",
        "## Usage", "",
        "With transformers:", "",
        "```python",
        f"from transformers import {loader}, AutoProcessor" if inputs.is_multimodal else
        f"from transformers import {loader}, AutoTokenizer",
        "",
        f'repo = "{inputs.repo_name}"',
        f'model = {loader}.from_pretrained(repo, dtype="auto", device_map="auto")',
        'processor = AutoProcessor.from_pretrained(repo)' if inputs.is_multimodal else
        'tokenizer = AutoTokenizer.from_pretrained(repo)',
        'messages = [{"role": "user", "content": "Explain mixture-of-experts in one paragraph."}]',
        ("inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, "
         "return_dict=True, return_tensors=\"pt\").to(model.device)") if inputs.is_multimodal else
        ("inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors=\"pt\", "
         "return_dict=True).to(model.device)"),
        "out = model.generate(**inputs, max_new_tokens=200)",
        ("print(processor.decode(out[0, inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True))"
         if inputs.is_multimodal else
         "print(tokenizer.decode(out[0, inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True))"),
        "```", "",
        "With vLLM:", "",
        "```bash",
        f"vllm serve {inputs.repo_name}",
        "```", "",
        "## Files", "",
        "- `reap_recipe.json`: method, criterion, ratio, gate definition, protection, calibration, seed, versions, "
        "and the commands to redo (or change) this prune.",
        "- `reap_scores.json`: every criterion's score for every expert, and the kept / pruned experts per layer.",
        "- `reap_stats.npz`: the calibration statistics themselves (load with `reap_core.stats.ExpertStats.load`), "
        "to try other criteria or ratios without recalibrating.",
        "- `reap_plan.json`: the pruning plan (kept experts per layer).", "",
        "## Citation", "",
        "```bibtex", CITATION, "```", "",
        f"License: {inputs.license or 'the license of the base model'}, as the base model.", "",
    ]
    return "\n".join(parts)
