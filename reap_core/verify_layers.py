"""Export verification layer by layer: the sliced checkpoint against the masked source, without a
second copy of the model in memory.

Both models are loaded with their decoder layers on disk (reap_core.sequential). The probe prompts
go through the source's skeleton once to record every layer's arguments; then for each layer the
source layer (under the plan's masked view) and the exported layer come onto the device together
and get the SAME input hidden states, the source's: a difference is pinned to the layer that has
it. The exported model also runs its own chain of layers (on its own recorded arguments), and its
final logits are compared with the source's, as the full-copy verification does (export.py), with
the same tolerances. Peak memory: two decoder layers + the probes' hidden states.
"""

from __future__ import annotations

import gc
import shutil
from pathlib import Path

import torch

from .calibration import Batch
from .errors import ReapError
from .masking import masked_view
from .plan import PruningPlan
from .sequential import OnDevice, load_offloaded, record_layer_inputs


class LayerMismatch(ReapError):
    """An exported layer computes something other than the masked source's layer."""


def _logits(loaded, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head on the last hidden states, as the model's own forward applies it."""
    backbone = loaded.model.model
    norm = getattr(backbone, "norm", None) or backbone.language_model.norm
    logits = loaded.model.lm_head(norm(hidden))
    softcap = getattr(loaded.adapter.text_config(loaded.config), "final_logit_softcapping", None)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits.float()


def verify_layerwise(source: str, folder: str | Path, plan: PruningPlan, prompts: tuple[str, ...],
                     tolerance: dict, dtype: str = "auto", offload_folder: str | Path | None = None) -> dict:
    """{max_abs_diff (final logits), tolerance, relative_tolerance, logit_scale, dtype, prompts,
    layers: [max |delta| per layer on the same inputs], method}; LayerMismatch above a tolerance."""
    src, src_off = load_offloaded(source, dtype=dtype, offload_folder=offload_folder)
    out, out_off = load_offloaded(str(folder), dtype=dtype, offload_folder=offload_folder)
    try:
        if out.adapter.num_experts(out.config) != plan.num_kept:
            raise LayerMismatch("the exported config does not have the pruned expert count")
        relative = tolerance.get(src.dtype, 2e-2)
        batches = []
        for prompt in prompts:
            ids = src.tokenizer(prompt, return_tensors="pt").input_ids
            batches.append(Batch(ids, torch.ones_like(ids), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long)))
        src_layers, src_calls, src_hidden = record_layer_inputs(src, batches)
        out_layers, out_calls, out_hidden = record_layer_inputs(out, batches)
        if len(src_layers) != len(out_layers):
            raise LayerMismatch(f"the export has {len(out_layers)} decoder layers, the source {len(src_layers)}")
        per_layer = []
        device = src.input_device
        with torch.inference_mode(), masked_view(src, plan):
            for i, (layer_src, layer_out) in enumerate(zip(src_layers, out_layers)):
                worst, scale = 0.0, 1.0
                with OnDevice(layer_src), OnDevice(layer_out):
                    for b in range(len(batches)):
                        _, args, kwargs = src_calls[i][b]
                        ref = _first(layer_src(src_hidden[b].to(device), *args, **kwargs))
                        same_input = _first(layer_out(src_hidden[b].to(device), *args, **kwargs))
                        worst = max(worst, (ref.float() - same_input.float()).abs().max().item())
                        scale = max(scale, ref.float().abs().max().item())
                        _, args_out, kwargs_out = out_calls[i][b]
                        out_hidden[b] = _first(layer_out(out_hidden[b].to(device), *args_out, **kwargs_out)).cpu()
                        src_hidden[b] = ref.cpu()
                per_layer.append(worst)
                if not worst <= relative * scale:
                    raise LayerMismatch(f"decoder layer {i} of the export differs from the masked source's by up to "
                                        f"{worst:.3g} on the same inputs (tolerance {relative * scale:.2g}); nothing "
                                        f"was written")
            worst, scale = 0.0, 1.0
            for b in range(len(batches)):
                ref = _logits(src, src_hidden[b].to(device))
                got = _logits(out, out_hidden[b].to(device))
                worst = max(worst, (ref - got).abs().max().item())
                scale = max(scale, ref.abs().max().item())
        result = {"max_abs_diff": worst, "tolerance": relative * scale, "relative_tolerance": relative,
                  "logit_scale": scale, "dtype": str(src.dtype).replace("torch.", ""), "prompts": len(prompts),
                  "layers": per_layer, "method": "layer by layer"}
        if not worst <= relative * scale:
            raise LayerMismatch(f"verification failed: the exported model's logits differ from the masked original by "
                                f"up to {worst:.3g} (tolerance {relative * scale:.2g} in {result['dtype']}); nothing "
                                f"was written")
        return result
    finally:
        del src, out
        gc.collect()
        shutil.rmtree(src_off, ignore_errors=True)
        shutil.rmtree(out_off, ignore_errors=True)


def _first(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output
