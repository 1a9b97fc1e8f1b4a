"""Qwen3-Next (Qwen3-Next-80B-A3B, Qwen3-Coder-Next): layout as data.

Hybrid attention (Gated DeltaNet and full-attention layers) does not matter to REAP: every layer's
MLP is an MoE block. Router `mlp.gate`: softmax over 512 experts, top-10, renormalised
(`norm_topk_prob`); gate = that renormalised probability. A shared expert (`mlp.shared_expert`,
scaled by sigmoid(`mlp.shared_expert_gate`)) runs on every token: never pruned. Checkpoints store
one tensor per expert.
"""

from __future__ import annotations

from dataclasses import replace

from .base import register_adapter
from .qwen3_moe import QWEN3_MOE_LAYOUT, Qwen3MoeAdapter

QWEN3_NEXT_LAYOUT = replace(
    QWEN3_MOE_LAYOUT,
    family="qwen3_next",
    model_types=("qwen3_next",),
    gate_definition=("softmax probability over all experts, renormalised over the top-k (norm_topk_prob): the "
                     "weight Qwen3-Next applies to the expert's output; the sigmoid-gated shared expert is always on"),
    shared_experts=("mlp.shared_expert", "mlp.shared_expert_gate"),
    flagships=("Qwen/Qwen3-Coder-Next", "Qwen/Qwen3-Next-80B-A3B-Instruct"),
)


class Qwen3NextAdapter(Qwen3MoeAdapter):     # same dense-layer rule (mlp_only_layers, decoder_sparse_step)
    layout = QWEN3_NEXT_LAYOUT


QWEN3_NEXT = register_adapter(Qwen3NextAdapter())
