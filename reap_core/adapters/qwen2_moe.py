"""Qwen2-MoE / Qwen1.5-MoE (Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B): layout as data.

Router `mlp.gate`: softmax over all experts, top-k, renormalised only when `norm_topk_prob` (false
in the released models: the gate is then the plain softmax probability). A shared expert
(`mlp.shared_expert`, scaled by sigmoid(`mlp.shared_expert_gate`)) runs on every token: never pruned.
Checkpoints store one tensor per expert; some layers may be dense (as Qwen3-MoE).
"""

from __future__ import annotations

from dataclasses import replace

from .base import register_adapter
from .qwen3_moe import QWEN3_MOE_LAYOUT, Qwen3MoeAdapter

QWEN2_MOE_LAYOUT = replace(
    QWEN3_MOE_LAYOUT,
    family="qwen2_moe",
    model_types=("qwen2_moe",),
    gate_definition=("softmax probability over all experts (renormalised over the top-k only when norm_topk_prob, "
                     "false for Qwen1.5/Qwen2-MoE): the weight applied to the expert's output; the shared expert is "
                     "always on"),
    shared_experts=("mlp.shared_expert", "mlp.shared_expert_gate"),
    thinking_markers=None,
    flagships=("Qwen/Qwen1.5-MoE-A2.7B-Chat", "Qwen/Qwen2-57B-A14B-Instruct"),
)


class Qwen2MoeAdapter(Qwen3MoeAdapter):
    layout = QWEN2_MOE_LAYOUT


QWEN2_MOE = register_adapter(Qwen2MoeAdapter())
