"""GraniteMoE (granite-3.0-1b-a400m, granite-3.0-3b-a800m): layout as data.

Router `block_sparse_moe.router`: top-k of the logits, softmax over those k; gate = that weight.
Checkpoints store experts fused as `input_linear` [E, 2I, H] / `output_linear` [E, H, I] and the
router as `router.layer`, renamed by transformers at load. Every layer MoE, no shared expert.
"""

from __future__ import annotations

from .base import MoEAdapter, MoELayout, register_adapter

GRANITEMOE_LAYOUT = MoELayout(
    family="granitemoe",
    model_types=("granitemoe",),
    router_module="block_sparse_moe.router",
    routing="topk_softmax",
    routing_options=(("float_logits", True),),
    expert_tensors=(("block_sparse_moe.router.weight", 0),
                    ("block_sparse_moe.experts.gate_up_proj", 0),
                    ("block_sparse_moe.experts.down_proj", 0)),
    experts_module="block_sparse_moe.experts",
    num_experts_key="num_local_experts",
    expert_width_key="intermediate_size",
    gate_definition="softmax over the top-k router logits: the weight GraniteMoE applies to the expert's output",
    checkpoint_expert_aliases=(("block_sparse_moe.router.layer.weight", 0), ("block_sparse_moe.input_linear.weight", 0),
                               ("block_sparse_moe.output_linear.weight", 0)),
    flagships=("ibm-granite/granite-3.0-3b-a800m-instruct", "ibm-granite/granite-3.0-1b-a400m-instruct"),
)


class GraniteMoeAdapter(MoEAdapter):
    layout = GRANITEMOE_LAYOUT


GRANITEMOE = register_adapter(GraniteMoeAdapter())
