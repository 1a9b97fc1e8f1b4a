"""OLMoE (OLMoE-1B-7B): layout as data.

Router `mlp.gate`: softmax over 64 experts, top-8, not renormalised (`norm_topk_prob` false): the
gate is the plain softmax probability of the expert, the weight its output is multiplied by. No
shared expert, every layer MoE. Checkpoints store one tensor per expert.
"""

from __future__ import annotations

from dataclasses import replace

from .base import MoEAdapter, register_adapter
from .qwen3_moe import QWEN3_MOE_LAYOUT

OLMOE_LAYOUT = replace(
    QWEN3_MOE_LAYOUT,
    family="olmoe",
    model_types=("olmoe",),
    expert_width_key="intermediate_size",
    gate_definition=("softmax probability over all experts (not renormalised over the top-k: norm_topk_prob is "
                     "false for OLMoE): the weight OLMoE applies to the expert's output"),
    thinking_markers=None,
    flagships=("allenai/OLMoE-1B-7B-0924-Instruct", "allenai/OLMoE-1B-7B-0924"),
)


class OlmoeAdapter(MoEAdapter):
    layout = OLMOE_LAYOUT


OLMOE = register_adapter(OlmoeAdapter())
