"""Qwen3.5-MoE (Qwen3.5-35B-A3B, Qwen3.5-397B-A17B): layout as data.

An image-text model (`model.language_model`, `model.visual`) or its text-only form
(`qwen3_5_moe_text`). Hybrid attention as Qwen3-Next; every layer is MoE. Router `mlp.gate`: softmax
over all experts, top-k, always renormalised; gate = that renormalised probability. A shared expert
(`mlp.shared_expert`, sigmoid-gated) runs on every token: never pruned. Checkpoints may store experts
fused (`mlp.experts.gate_up_proj`) or one tensor per expert; both are exported as they came.
"""

from __future__ import annotations

from .base import MoEAdapter, MoELayout, register_adapter
from .qwen3_moe import QWEN_EXPERTS

QWEN3_5_MOE_LAYOUT = MoELayout(
    family="qwen3_5_moe",
    model_types=("qwen3_5_moe", "qwen3_5_moe_text"),
    layer_list_paths=("model.language_model.layers", "model.layers"),
    checkpoint_layer_prefixes=("model.language_model.layers.{i}.", "model.layers.{i}."),
    routing="softmax_topk",
    expert_tensors=QWEN_EXPERTS,
    num_experts_key="num_experts",
    expert_width_key="moe_intermediate_size",
    text_config_attr="text_config",
    non_text_prefixes=("model.visual.",),
    gate_definition=("softmax probability over all experts, renormalised over the top-k: the weight Qwen3.5 "
                     "applies to the expert's output; the sigmoid-gated shared expert is always on"),
    shared_experts=("mlp.shared_expert", "mlp.shared_expert_gate"),
    checkpoint_expert_lists=("mlp.experts",),
    thinking_markers=("<think>", "</think>"),
    end_of_turn_markers=("<|im_end|>",),
    flagships=("Qwen/Qwen3.5-35B-A3B", "Qwen/Qwen3.5-397B-A17B"),
)


class Qwen3_5MoeAdapter(MoEAdapter):
    layout = QWEN3_5_MOE_LAYOUT


QWEN3_5_MOE = register_adapter(Qwen3_5MoeAdapter())
