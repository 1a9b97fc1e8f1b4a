"""The exported folder describes itself: a recipe (JSON, to redo or change the prune) and a model
card (README.md: Hub metadata plus a body written for people).

Both are built from the same plain data the export used (plan, statistics, sizes), never from UI
state. The card is huggingface_hub's own: ModelCardData makes the YAML (so it always parses on the
Hub) and ModelCard.from_template renders CARD_TEMPLATE (Jinja) with it.
"""

from __future__ import annotations

import platform
import shlex
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .adapters import MoEAdapter
from .plan import PruningPlan
from .saliency import get_criterion
from .sizing import ModelSize
from .stats import ExpertStats

if TYPE_CHECKING:  # the evaluation results only pass through: no import at run time
    from .fidelity import FidelityResult
    from .generation_quality import GenerationReport
    from .task_eval import TaskReport

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
    merge = plan.extra.get("merge")
    redo = [f"python -m reap_core calibrate --model {model} --calibration {shlex.quote(str(calib.get('spec', '?')))}"
            f" --max-tokens {shlex.quote(str(calib.get('max_tokens', '?')))} --out reap_stats.npz"]
    if merge:
        redo.append(f"python -m reap_core merge --model {model} --stats reap_stats.npz --method {merge['method']}"
                    f" --ratio {plan.compression_ratio:g}" + ("" if merge["aligned"] else " --no-align") + " --out merged")
    else:
        redo.append(f"python -m reap_core export --model {model} --stats reap_stats.npz"
                    f" --ratio {plan.compression_ratio:g} --criterion {plan.criterion}"
                    + (" --protect-super-experts" if protect else "") + (f" --seed {plan.seed}" if plan.seed else "")
                    + " --out pruned")
    return {
        "method": (f"expert merging, {merge['definition']}; clusters from the same routed-token statistics as REAP"
                   if merge else "REAP expert pruning (Lasby et al., ICLR 2026, arXiv 2510.13999), routed-token "
                                 "statistics"),
        **({"merge": merge} if merge else {}),
        "base_model": base_model, "source": source,
        "criterion": plan.criterion,
        "criterion_definition": (f"representatives: {merge['router']}" if merge
                                 else get_criterion(plan.criterion).definition),
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
    shared_experts: tuple[str, ...] = ()   # always-on experts of the family (never pruned)
    expert_groups: int = 1                 # group-limited routing: experts pruned equally per group


def base_license(folder: Path | None) -> str | None:
    """The source card's licence; None (the card then says "the license of the base model") when
    there is no card, or its metadata does not parse."""
    if folder is None or not (folder / CARD_FILE).is_file():
        return None
    import yaml
    from huggingface_hub import ModelCard

    try:
        return ModelCard.load(folder / CARD_FILE).data.license
    except (OSError, ValueError, yaml.YAMLError):
        return None


def card_inputs(config: Any, adapter: MoEAdapter, plan: PruningPlan, weight_dtype: str, *, repo_name: str,
                source_folder: Path | None, multimodal: bool, eval_results: dict | None) -> CardInputs:
    """Sizes from the config alone (reap_core.sizing), in the format the weights are stored in."""
    from .sizing import BYTES_PER_PARAM, checkpoint_format, count_params, size_at

    counts = count_params(config, adapter)
    # the expert tensors' dtype, or the quantisation config.json declares (FP8 is F8_E4M3, MXFP4 is U8 blocks)
    fmt = weight_dtype if weight_dtype in BYTES_PER_PARAM else checkpoint_format(config)
    original, pruned = size_at(counts, plan.num_experts, fmt), size_at(counts, plan.num_kept, fmt)
    if fmt == "BF16" and weight_dtype not in BYTES_PER_PARAM:     # a dtype we have no size rule for: say so
        original = replace(original, format=f"{weight_dtype} safetensors (sized as BF16)")
        pruned = replace(pruned, format=f"{weight_dtype} safetensors (sized as BF16)")
    return CardInputs(repo_name=repo_name, family=adapter.layout.family,
                      pipeline_tag="image-text-to-text" if multimodal else "text-generation",
                      license=base_license(source_folder), original=original, pruned=pruned,
                      is_multimodal=multimodal, eval_results=eval_results, shared_experts=adapter.layout.shared_experts,
                      expert_groups=adapter.expert_groups(config))


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


# The card's body, a Jinja template rendered by huggingface_hub.ModelCard.from_template: `card_data`
# (the YAML) and the metadata fields (base_model, license, ...) come from ModelCardData, the rest
# from card_fields(). Markdown joins wrapped lines, so paragraphs are wrapped here for reading.
CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ repo_name }}

{% if r.merge -%}
{{ base_link }} with **its {{ r.num_experts }} experts merged into {{ r.num_experts_kept }} in every MoE layer** by
expert merging ({{ r.merge.method }}: {{ r.merge.definition }}). Each merged expert is a weighted average of a
cluster of the original experts{% if r.merge.aligned %}, their neurons aligned first{% endif %}; it keeps the
router row of its cluster's representative. No fine-tuning. It loads in stock transformers and vLLM like the original
{%- else -%}
{{ base_link }} with **{{ removed }} of its {{ r.num_experts }} experts removed in every MoE layer** by expert
pruning with REAP (Router-weighted Expert Activation Pruning). The remaining weights are the original ones,
unchanged: no fine-tuning, no merging. It loads in stock transformers and vLLM like the original
{%- endif -%}
{%- if multimodal %}, vision tower included.{% else %}.{% endif %}

{{ size_table }}

Active parameters per token change little: the router still picks the same number of experts per token, from a
smaller pool. Sizes are computed from the config (parameters x bytes per parameter of the format).

## How it was made

1. Calibration: {{ c.tokens }} tokens ({{ c.samples }} samples, at most {{ c.max_tokens_per_sample }} tokens each)
   were run through the original model once, recording for each expert the tokens routed to it, its gate and
   the norm of its output.
{% if r.merge -%}
2. Clustering: {{ r.merge.definition }}; {{ r.merge.router }}.
{%- else -%}
2. Saliency: each expert got the score `{{ r.criterion }}` ({{ r.criterion_definition }}).
{%- endif %}
{% if r.merge -%}
3. Merging: the experts of every layer were grouped into {{ r.num_experts_kept }} clusters; each cluster's
   weights were averaged into its representative's slot (the clusters and weights of every layer are in
   `reap_recipe.json` under `merge`); the other experts' router rows and tensors are sliced out, and the expert
   count in config.json is updated.
{%- else -%}
3. Pruning: the lowest-scoring experts of every layer were removed: their router rows and every per-expert
   tensor (weights, and scales or biases where the family has them) are sliced out of the checkpoint, and
   the expert count in config.json is updated.
{%- endif %}
4. Verification: {{ check }}

### Calibration data

Source: `{{ c.spec }}`.

{{ calibration_table }}

### Pruning configuration

{{ config_table }}

### Expert saliency

![Expert saliency per layer]({{ heatmap_file }})

Rows are MoE layers, columns experts. Blue = kept, orange = pruned; darker = higher score relative to the best
expert of the same layer.

## Evaluation

{% if eval_section %}{{ eval_section }}{% else -%}
No evaluation results yet. Pruning removes knowledge the calibration data did not exercise: evaluate on your own
tasks before relying on this model.
{%- endif %}

## Usage

With transformers:

```python
{% if multimodal -%}
from transformers import AutoModelForImageTextToText, AutoProcessor

repo = "{{ repo_name }}"
model = AutoModelForImageTextToText.from_pretrained(repo, dtype="auto", device_map="auto")
processor = AutoProcessor.from_pretrained(repo)
messages = [{"role": "user", "content": "Explain mixture-of-experts in one paragraph."}]
inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                       return_dict=True, return_tensors="pt").to(model.device)
out = model.generate(**inputs, max_new_tokens=200)
print(processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
{%- else -%}
from transformers import AutoModelForCausalLM, AutoTokenizer

repo = "{{ repo_name }}"
model = AutoModelForCausalLM.from_pretrained(repo, dtype="auto", device_map="auto")
tokenizer = AutoTokenizer.from_pretrained(repo)
messages = [{"role": "user", "content": "Explain mixture-of-experts in one paragraph."}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                       return_dict=True).to(model.device)
out = model.generate(**inputs, max_new_tokens=200)
print(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
{%- endif %}
```

With vLLM:

```bash
vllm serve {{ repo_name }}
```

## Files

- `reap_recipe.json`: method, criterion, ratio, gate definition, protection, calibration, seed, versions, and
  the commands to redo (or change) this prune.
- `reap_scores.json`: every criterion's score for every expert, and the kept / pruned experts per layer.
- `reap_stats.npz`: the calibration statistics themselves (load with `reap_core.stats.ExpertStats.load`), to
  try other criteria or ratios without recalibrating.
- `reap_plan.json`: the pruning plan (kept experts per layer).

## Citation

```bibtex
{{ citation }}
```

License: {{ license or "the license of the base model" }}, as the base model.
"""


def card_data(inputs: CardInputs, base_model: str | None) -> Any:
    """The card's metadata as huggingface_hub.ModelCardData, so its YAML always parses on the Hub."""
    from huggingface_hub import ModelCardData

    tags = ["moe", "pruning", "reap", "expert-pruning", inputs.family, "mixture-of-experts"]
    return ModelCardData(base_model=base_model, library_name="transformers", pipeline_tag=inputs.pipeline_tag,
                         license=inputs.license, tags=tags)


def card_fields(inputs: CardInputs, recipe: dict) -> dict:
    """The template's values: the recipe as `r`, its calibration as `c`, and the rendered tables."""
    base = recipe.get("base_model")
    o, p = inputs.original, inputs.pruned
    calib, protect = recipe["calibration"], recipe["super_expert_protection"]
    verification = recipe["export"].get("verification") or {}
    total_tokens = max(sum(calib["tokens_per_category"].values()), 1)
    removed = recipe["num_experts"] - recipe["num_experts_kept"]
    size_rows = [[k, a, b] for (k, a), b in zip(o.as_row().items(), p.as_row().values())]
    calib_rows = [[c, calib["samples_per_category"].get(c, "–"), n, f"{n / total_tokens:.1%}"]
                  for c, n in calib["tokens_per_category"].items()]
    config_rows = [
        ["Criterion", f"`{recipe['criterion']}`: {recipe['criterion_definition']}"],
        ["Compression ratio", f"{recipe['compression_ratio']:g} ({removed} of {recipe['num_experts']} experts "
                              f"removed in each of {len(recipe['layers'])} MoE layers)"],
        ["Experts kept per layer", recipe["num_experts_kept"]],
        ["Experts per token (top-k)", recipe["top_k"]],
        ["Gate used in the score", recipe["gate_definition"]],
        *([["Shared experts", f"kept whole, never pruned ({', '.join(f'`{m}`' for m in inputs.shared_experts)}): "
                              f"they run on every token"]] if inputs.shared_experts else []),
        *([["Expert groups", f"{inputs.expert_groups} groups of group-limited routing; the same number of experts "
                             f"removed from each"]] if inputs.expert_groups > 1 else []),
        ["Super-expert protection", f"on (factor {protect['factor']})" if protect["enabled"] else "off"],
        ["Seed", recipe["seed"]],
        ["Calibration fingerprint", f"`{calib['fingerprint']}`"],
        ["Tool", f"REAP Studio `reap_core` {recipe['versions']['reap_core']} "
                 f"(transformers {recipe['versions'].get('transformers', '?')}, torch {recipe['versions'].get('torch', '?')})"],
    ]
    if verification.get("max_abs_diff") is not None:
        tol = (f"{verification['tolerance']:.2e} = {verification['relative_tolerance']:.0e} × the largest |logit|"
               if verification.get("relative_tolerance") is not None else f"{verification['tolerance']:.2e}")
        against = ("the merged model in memory (merged experts, the other experts masked out of the router)"
                   if recipe.get("merge") else "the original model with the pruned experts masked out of the router")
        check = (f"Reloaded with the Auto classes and compared with {against}, on {verification['prompts']} probe prompts: max |Δ logits| = "
                 f"{verification['max_abs_diff']:.2e} ({verification['dtype']}, tolerance {tol}).")
    else:
        check = "The export was not verified against the original model (verification was turned off)."
    return {"repo_name": inputs.repo_name, "multimodal": inputs.is_multimodal, "r": recipe, "c": calib,
            "removed": removed, "check": check, "heatmap_file": HEATMAP_FILE, "citation": CITATION,
            "base_link": f"[{base}](https://huggingface.co/{base})" if base else f"`{recipe['source']}`",
            "size_table": _table(["", "Original", "Pruned"], size_rows),
            "calibration_table": _table(["Category", "Samples", "Tokens", "Share"], calib_rows),
            "config_table": _table(["Setting", "Value"], config_rows),
            "eval_section": eval_table(inputs.eval_results) if inputs.eval_results else ""}


def model_card(inputs: CardInputs, recipe: dict) -> Any:
    """README.md as a huggingface_hub.ModelCard (`.save(path)` writes it)."""
    from huggingface_hub import ModelCard

    return ModelCard.from_template(card_data(inputs, recipe.get("base_model")),   # + "\n": Jinja drops one
                                   template_str=CARD_TEMPLATE + "\n", **card_fields(inputs, recipe))


# --- evaluation results as card rows -------------------------------------------------------

def card_eval_results(plan: PruningPlan, fidelity: FidelityResult | None = None,
                      generation: GenerationReport | None = None, tasks: TaskReport | None = None) -> dict:
    """{task: {"Original": v, "Pruned" (or "Merged"): v}} plus "_description", for card.CardInputs.eval_results."""
    rows: dict[str, Any] = {}
    notes = []
    col = "Merged" if plan.extra.get("merge") else "Pruned"
    if tasks is not None:
        for dom, r in tasks.per_domain.items():
            (oc, ot), (pc, pt) = r["original"], r["pruned"]
            rows[f"{tasks.suite} · {dom} (n={ot})"] = {"Original": f"{oc}/{ot} ({oc / max(ot, 1):.0%})",
                                                       col: f"{pc}/{pt} ({pc / max(pt, 1):.0%})"}
        rows[f"{tasks.suite} · all (n={tasks.samples})"] = {"Original": f"{tasks.accuracy('original'):.1%}",
                                                           col: f"{tasks.accuracy('pruned'):.1%}"}
        notes.append(f"Task accuracy: greedy answers on the {tasks.suite} suite, {tasks.samples} items"
                     + (", thinking on." if tasks.settings.get("thinking") else "."))
    if fidelity is not None:
        try:
            pt = fidelity.point(plan.criterion, plan.compression_ratio)
            rows["Next-token KL vs original (nats/token)"] = {"Original": 0.0, col: pt.kl}
            rows["Top-1 agreement with original"] = {"Original": 1.0, col: pt.top1}
            rows["Perplexity ratio"] = {"Original": 1.0, col: pt.ppl_ratio}
            excluded = fidelity.heldout.get("note") or ""       # which calibration samples were kept out
            notes.append(f"Fidelity: {fidelity.scored_line()}"
                         + (f" {excluded[0].upper()}{excluded[1:]}." if excluded else ""))
        except KeyError:
            notes.append("Fidelity: the sweep does not contain this plan's criterion and ratio.")
    if generation is not None:
        o, p = generation.overall("original"), generation.overall("pruned")
        rows[f"Generation: avg words (n={o.n})"] = {"Original": round(o.avg_words, 1), col: round(p.avg_words, 1)}
        rows["Generation: loop rate"] = {"Original": f"{o.loop_rate:.0%}", col: f"{p.loop_rate:.0%}"}
        rows["Generation: collapse rate"] = {"Original": f"{o.collapse_rate:.0%}", col: f"{p.collapse_rate:.0%}"}
        notes.append(generation.settings.get("definitions", ""))
    what = (f"Merged = {plan.num_experts} experts per layer merged into {plan.num_kept} by {plan.extra['merge']['method']} "
            f"(ratio {plan.compression_ratio:.0%}), evaluated as the merged model in memory. " if plan.extra.get("merge")
            else f"Pruned = {plan.num_pruned} of {plan.num_experts} experts per layer removed by {plan.criterion} "
                 f"(ratio {plan.compression_ratio:.0%}), evaluated as a masked view. ")
    rows["_description"] = what + " ".join(n for n in notes if n)
    return rows
