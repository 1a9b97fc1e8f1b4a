"""Mixtral (8x7B, 8x22B): layout as data.

Router `mlp.gate`: softmax over the experts, top-2, always renormalised over the two; gate = that
renormalised probability. No shared expert, every layer MoE. Checkpoints store one tensor per
expert under `block_sparse_moe.experts.{j}` (w1 = gate, w3 = up, w2 = down), renamed to `mlp` by
transformers at load. With 8 experts and top-2, a ratio keeps at least 2.
"""

from __future__ import annotations

from .base import MoEAdapter, MoELayout, register_adapter
from .qwen3_moe import QWEN_EXPERTS

MIXTRAL_LAYOUT = MoELayout(
    family="mixtral",
    model_types=("mixtral",),
    routing="softmax_topk",
    routing_options=(("weights_in_logits_dtype", False),),   # Mixtral keeps the weights in float32
    expert_tensors=QWEN_EXPERTS,
    num_experts_key="num_local_experts",
    expert_width_key="intermediate_size",
    gate_definition=("softmax probability renormalised over the top-k experts: the weight Mixtral applies to the "
                     "expert's output"),
    checkpoint_expert_lists=("block_sparse_moe.experts", "mlp.experts"),
    checkpoint_expert_aliases=(("block_sparse_moe.gate.weight", 0),),
    flagships=("mistralai/Mixtral-8x7B-Instruct-v0.1", "mistralai/Mixtral-8x22B-Instruct-v0.1"),
)


class MixtralAdapter(MoEAdapter):
    layout = MIXTRAL_LAYOUT


MIXTRAL = register_adapter(MixtralAdapter())
