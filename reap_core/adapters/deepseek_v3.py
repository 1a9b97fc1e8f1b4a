"""DeepSeek-V3 / R1 (and checkpoints built on its architecture, e.g. Kimi-K2 converted to it): layout.

Router `mlp.gate`: sigmoid scores s_j; the *selection* uses s_j + e_score_correction_bias_j, limited
to the best `topk_group` of `n_group` groups (a group's score = the sum of its two best); the gate
is the chosen s_j (no bias), renormalised over the k (`norm_topk_prob`) and times
`routed_scaling_factor` (2.5): the weight the expert's output is multiplied by. Masking therefore
masks the selection scores (a pruned expert's bias could still pick it), and plans prune the same
number of experts in every group. Shared experts (`mlp.shared_experts`) are never pruned; the
first `first_k_dense_replace` layers are dense. Checkpoints store one tensor per expert (FP8 ones
with a `weight_scale_inv` per expert tensor: handled the same way).
"""

from __future__ import annotations

from typing import Any

from .base import MoEAdapter, MoELayout, register_adapter

DEEPSEEK_V3_LAYOUT = MoELayout(
    family="deepseek_v3",
    model_types=("deepseek_v3",),
    routing="sigmoid_bias",
    expert_tensors=(("mlp.gate.weight", 0),                    # router rows [E, H]
                    ("mlp.gate.e_score_correction_bias", 0),   # selection bias [E] (a buffer)
                    ("mlp.experts.gate_up_proj", 0),           # [E, 2I, H]
                    ("mlp.experts.down_proj", 0)),             # [E, H, I]
    num_experts_key="n_routed_experts",
    expert_width_key="moe_intermediate_size",
    gate_definition=("sigmoid score of the expert (selection adds e_score_correction_bias, limited to the best "
                     "topk_group groups; the gate does not), renormalised over the top-k, times "
                     "routed_scaling_factor: the weight DeepSeek-V3 applies to the expert's output"),
    shared_experts=("mlp.shared_experts",),
    group_keys=("n_group", "topk_group"),
    checkpoint_expert_lists=("mlp.experts",),
    thinking_markers=("<think>", "</think>"),
    end_of_turn_markers=("<｜end▁of▁sentence｜>", "<|user|>", "<|observation|>"),
    flagships=("deepseek-ai/DeepSeek-V3", "deepseek-ai/DeepSeek-R1"),
)


def first_dense_layers(text_config: Any) -> list[int]:
    """Layers from `first_k_dense_replace` on are MoE (modeling_deepseek_v3 / modeling_glm4_moe)."""
    return list(range(int(getattr(text_config, "first_k_dense_replace", 0) or 0), text_config.num_hidden_layers))


class DeepseekV3Adapter(MoEAdapter):
    layout = DEEPSEEK_V3_LAYOUT

    def moe_layer_indices(self, config: Any) -> list[int]:
        return first_dense_layers(self.text_config(config))


DEEPSEEK_V3 = register_adapter(DeepseekV3Adapter())
