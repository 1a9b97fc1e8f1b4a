"""gpt-oss (gpt-oss-20b, gpt-oss-120b): layout as data.

Router `mlp.router` (a linear layer with bias): top-k of the logits, softmax over those k; gate =
that softmax weight. Experts have biases, interleaved gate/up columns and a clamped SwiGLU
(transformers' `_apply_gate`), stored transposed ([E, H, 2I]): the base kernels honour those flags.
Checkpoints store experts fused; the released ones in MXFP4 (`*_blocks` / `*_scales`, expert axis 0),
sliced the same way. Every layer MoE, no shared expert. Reasoning: the harmony "analysis" channel.
"""

from __future__ import annotations

from .base import MoEAdapter, MoELayout, register_adapter

GPT_OSS_LAYOUT = MoELayout(
    family="gpt_oss",
    model_types=("gpt_oss",),
    router_module="mlp.router",
    routing="topk_softmax",
    expert_tensors=(("mlp.router.weight", 0), ("mlp.router.bias", 0),
                    ("mlp.experts.gate_up_proj", 0), ("mlp.experts.gate_up_proj_bias", 0),   # [E, H, 2I], [E, 2I]
                    ("mlp.experts.down_proj", 0), ("mlp.experts.down_proj_bias", 0)),        # [E, I, H], [E, H]
    num_experts_key="num_local_experts",
    expert_width_key="intermediate_size",
    gate_definition=("softmax over the top-k router logits (router with bias): the weight gpt-oss applies to the "
                     "expert's output"),
    checkpoint_expert_aliases=(("mlp.experts.gate_up_proj_blocks", 0), ("mlp.experts.gate_up_proj_scales", 0),
                               ("mlp.experts.down_proj_blocks", 0), ("mlp.experts.down_proj_scales", 0)),
    gate_up_interleaved=True,   # gate = columns 0, 2, 4 ..., up = 1, 3, 5 ... (transformers' _apply_gate)
    thinking_markers=("<|channel|>analysis<|message|>", "<|end|>"),
    answer_marker="<|channel|>final<|message|>",
    end_of_turn_markers=("<|return|>", "<|call|>"),
    flagships=("openai/gpt-oss-20b", "openai/gpt-oss-120b"),
)


class GptOssAdapter(MoEAdapter):
    layout = GPT_OSS_LAYOUT


GPT_OSS = register_adapter(GptOssAdapter())
