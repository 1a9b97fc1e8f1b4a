"""Qwen3-MoE (Qwen3-30B-A3B, Qwen3-235B-A22B, Qwen3-Coder-30B-A3B / 480B-A35B): layout as data.

Router `mlp.gate`: softmax over all experts' logits, top-k, renormalised over the k when
`norm_topk_prob` (true in every released Qwen3-MoE). Gate = that renormalised probability: the
weight the expert's output is multiplied by in the layer's sum. No shared expert.
Checkpoints store one tensor per expert (`mlp.experts.{j}.gate_proj.weight`), fused by transformers
at load; `mlp_only_layers` / `decoder_sparse_step` may make some layers dense.
"""

from __future__ import annotations

from typing import Any

from .base import MoEAdapter, MoELayout, register_adapter

QWEN_EXPERTS = (("mlp.gate.weight", 0),                # router rows [E, H]
                ("mlp.experts.gate_up_proj", 0),       # [E, 2I, H]
                ("mlp.experts.down_proj", 0))          # [E, H, I]


def sparse_step_layers(text_config: Any) -> list[int]:
    """Qwen's rule for which layers are MoE (modeling_qwen3_moe.Qwen3MoeDecoderLayer)."""
    step = int(getattr(text_config, "decoder_sparse_step", 1) or 1)
    dense = set(getattr(text_config, "mlp_only_layers", None) or [])
    return [i for i in range(text_config.num_hidden_layers) if i not in dense and (i + 1) % step == 0]


QWEN3_MOE_LAYOUT = MoELayout(
    family="qwen3_moe",
    model_types=("qwen3_moe",),
    routing="softmax_topk",
    expert_tensors=QWEN_EXPERTS,
    num_experts_key="num_experts",
    expert_width_key="moe_intermediate_size",
    gate_definition=("softmax probability over all experts, renormalised over the top-k when norm_topk_prob "
                     "(true for Qwen3-MoE): the weight Qwen3-MoE applies to the expert's output"),
    checkpoint_expert_lists=("mlp.experts",),
    thinking_markers=("<think>", "</think>"),
    end_of_turn_markers=("<|im_end|>",),
    flagships=("Qwen/Qwen3-30B-A3B", "Qwen/Qwen3-Coder-30B-A3B-Instruct", "Qwen/Qwen3-Coder-480B-A35B-Instruct",
               "Qwen/Qwen3-235B-A22B"),
)


class Qwen3MoeAdapter(MoEAdapter):
    layout = QWEN3_MOE_LAYOUT

    def moe_layer_indices(self, config: Any) -> list[int]:
        return sparse_step_layers(self.text_config(config))


QWEN3_MOE = register_adapter(Qwen3MoeAdapter())
