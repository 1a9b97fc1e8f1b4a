"""MiniMax-M2 / M2.1: layout as data.

Router `mlp.gate`: sigmoid scores; selection on scores + `mlp.e_score_correction_bias` (a buffer of
the MoE block, handed to the router); gate = the chosen sigmoid scores renormalised over the k (no
scaling): the weight the expert's output is multiplied by. Masking masks the selection. No shared
expert, every layer MoE. Checkpoints store one tensor per expert under `block_sparse_moe.experts.{j}`
(w1 = gate, w3 = up, w2 = down), renamed to `mlp` by transformers at load.
"""

from __future__ import annotations

from .base import MoEAdapter, MoELayout, register_adapter

MINIMAX_M2_LAYOUT = MoELayout(
    family="minimax_m2",
    model_types=("minimax_m2",),
    routing="sigmoid_bias",
    routing_options=(("float32_logits", False),),
    expert_tensors=(("mlp.gate.weight", 0),
                    ("mlp.e_score_correction_bias", 0),
                    ("mlp.experts.gate_up_proj", 0),
                    ("mlp.experts.down_proj", 0)),
    num_experts_key="num_local_experts",
    expert_width_key="intermediate_size",
    gate_definition=("sigmoid score of the expert (selection adds e_score_correction_bias; the gate does not), "
                     "renormalised over the top-k: the weight MiniMax-M2 applies to the expert's output"),
    checkpoint_expert_lists=("block_sparse_moe.experts", "mlp.experts"),
    checkpoint_expert_aliases=(("block_sparse_moe.gate.weight", 0), ("block_sparse_moe.e_score_correction_bias", 0)),
    thinking_markers=("<think>", "</think>"),
    end_of_turn_markers=("[e~[",),
    flagships=("MiniMaxAI/MiniMax-M2", "MiniMaxAI/MiniMax-M2.1"),
)


class MiniMaxM2Adapter(MoEAdapter):
    layout = MINIMAX_M2_LAYOUT


MINIMAX_M2 = register_adapter(MiniMaxM2Adapter())
