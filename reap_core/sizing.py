"""Size planning from the config alone: no weight is read, so it works on a folder that holds only
config.json, and answers "how big is the 52 GB model at ratio 0.3?" in a second on a laptop.

The model is built on the meta device (shapes, no memory) and its parameters are counted once;
every ratio afterwards is arithmetic. Definitions (also in the README and model cards):
  total params      every parameter, vision/audio towers included, tied weights counted once
  active params     language-model parameters used for one token: everything in the text model
                    except the experts, plus top_k experts per MoE layer (router rows all count,
                    embeddings count; vision/audio towers do not)
  size              total params x bytes per parameter of the checkpoint's format: its dtype (BF16 for
                    Gemma 4), or its quantisation (FP8: ~1 byte per parameter, block scales aside;
                    MXFP4, gpt-oss: 4.25 bits per expert parameter, the rest BF16)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .adapters import MoEAdapter, find_adapter, get_by_path
from .plan import check_ratio, experts_to_prune

BYTES_PER_PARAM = {"BF16": 2, "F16": 2, "F32": 4, "FP8": 1, "MXFP4": 2}
EXPERT_BYTES_PER_PARAM = {"MXFP4": 4.25 / 8}    # 4-bit values + one 8-bit scale per 32; only the experts
_FORMATS = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}
_QUANTISED = {"fp8": "FP8", "mxfp4": "MXFP4"}


def checkpoint_format(config: Any) -> str:
    """The format the checkpoint is stored in, which an export keeps: its quantisation where
    config.json declares one (DeepSeek-V3 and MiniMax-M2: FP8; gpt-oss: MXFP4), else its dtype."""
    quant = getattr(config, "quantization_config", None)
    method = (quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", None))
    if str(method or "").lower() in _QUANTISED:
        return _QUANTISED[str(method).lower()]
    dtype = str(getattr(config, "dtype", None) or "bfloat16")
    return _FORMATS.get(dtype.replace("torch.", ""), "BF16")


@dataclass(frozen=True)
class ParamCounts:
    """What pruning arithmetic needs, counted once per config."""

    total: int                 # all parameters
    non_text: int              # vision/audio towers and their projections
    moe_layers: int
    num_experts: int
    top_k: int
    expert_mlp_params: int     # one expert's MLP in one layer (gate_up + down)
    expert_router_params: int  # one expert's router row (+ per-expert scalars) in one layer
    largest_layer: int = 0     # the largest decoder layer (what layer-by-layer work holds at once)
    hidden_size: int = 0       # width of the hidden states (what layer-by-layer work keeps per token)


@dataclass(frozen=True)
class ModelSize:
    experts_per_layer: int
    experts_per_token: int
    total_params: int
    active_params: int
    bytes: int
    format: str

    def as_row(self) -> dict[str, str]:
        return {"Total parameters": human_count(self.total_params),
                "Experts per layer": str(self.experts_per_layer),
                "Active parameters / token": human_count(self.active_params),
                "Experts per token": str(self.experts_per_token),
                "Format": self.format,
                "Disk size": human_bytes(self.bytes)}


def human_count(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def human_bytes(n: int) -> str:
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n} B"


def count_params(config: Any, adapter: MoEAdapter | None = None) -> ParamCounts:
    """Count parameters by building the model on the meta device (no memory, no weights)."""
    from transformers import AutoModelForCausalLM

    adapter = adapter or find_adapter(config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    non_text = sum(p.numel() for n, p in model.named_parameters()
                   if n.startswith(adapter.layout.non_text_prefixes))
    moe = adapter.moe_layers(model)
    num_experts = adapter.num_experts(config)
    mlp = router = 0
    if moe:
        layer = moe[0][1]
        for name, _ in adapter.layout.expert_tensors:
            tensor = get_by_path(layer, name)
            if not isinstance(tensor, torch.nn.Parameter):     # a buffer (selection bias): not a parameter
                continue
            numel = tensor.numel() // num_experts
            if name.startswith(adapter.layout.experts_module + "."):
                mlp += numel
            else:
                router += numel
    largest = max((sum(p.numel() for p in layer.parameters()) for layer in adapter.decoder_layers(model)), default=0)
    return ParamCounts(total=total, non_text=non_text, moe_layers=len(moe), num_experts=num_experts,
                       top_k=adapter.top_k(config), expert_mlp_params=mlp, expert_router_params=router,
                       largest_layer=largest, hidden_size=model.get_input_embeddings().embedding_dim)


def size_at(counts: ParamCounts, experts_kept: int, fmt: str = "BF16") -> ModelSize:
    per_expert = counts.expert_mlp_params + counts.expert_router_params
    removed = counts.moe_layers * (counts.num_experts - experts_kept)
    total = counts.total - removed * per_expert
    text_total = total - counts.non_text
    active = (text_total - counts.moe_layers * experts_kept * counts.expert_mlp_params
              + counts.moe_layers * min(counts.top_k, experts_kept) * counts.expert_mlp_params)
    expert_params = counts.moe_layers * experts_kept * counts.expert_mlp_params
    size = (total - expert_params) * BYTES_PER_PARAM[fmt] + \
        expert_params * EXPERT_BYTES_PER_PARAM.get(fmt, BYTES_PER_PARAM[fmt])
    return ModelSize(experts_per_layer=experts_kept, experts_per_token=counts.top_k, total_params=total,
                     active_params=active, bytes=int(size), format=f"{fmt} safetensors")


def sizes_for_ratio(counts: ParamCounts, ratio: float, fmt: str = "BF16") -> tuple[ModelSize, ModelSize]:
    """(original, pruned) for a compression ratio; InvalidPlan for an unusable ratio."""
    check_ratio(ratio, counts.num_experts, counts.top_k)
    kept = counts.num_experts - experts_to_prune(counts.num_experts, ratio)
    return size_at(counts, counts.num_experts, fmt), size_at(counts, kept, fmt)
