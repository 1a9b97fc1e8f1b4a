"""Gemma 4 (26B-A4B and smaller MoE variants): its layout as data; the base adapter does the rest.

Each decoder layer has a dense MLP and an MoE block side by side. The router returns
(probs [T, E], top_k_weights [T, K], top_k_index [T, K]) where top_k_weights is the softmax
probability renormalised over the K chosen experts and multiplied by `per_expert_scale`:
exactly the weight the experts' outputs are combined with. That weight is our REAP gate.

Experts are fused 3-D tensors (gate_up_proj [E, 2I, H], down_proj [E, H, I]) and the module
returns only the weighted sum, so no hook can see one expert's output: the base adapter's observer
replaces the experts' forward, inside an `observing` block and for the observing thread only, with
a routed-only kernel (kernels.py) that reduces each (token, expert) output before weighting to its
norm and max |value| and combines the outputs as the model does (equal to ~1e-6).
"""

from __future__ import annotations

from .base import MoEAdapter, MoELayout, register_adapter

GEMMA4_LAYOUT = MoELayout(
    family="gemma4",
    model_types=("gemma4", "gemma4_text"),
    layer_list_paths=("model.language_model.layers", "model.layers", "language_model.layers", "layers"),
    checkpoint_layer_prefixes=("model.language_model.layers.{i}.", "model.layers.{i}."),
    router_module="router",
    router_logits_module="router.proj",   # softmax over its output: masking the logits is exact
    expert_tensors=(
        ("router.proj.weight", 0),        # [E, H]
        ("router.per_expert_scale", 0),   # [E]
        ("experts.gate_up_proj", 0),      # [E, 2I, H]
        ("experts.down_proj", 0),         # [E, H, I]
    ),
    experts_module="experts",
    num_experts_key="num_experts",
    top_k_key="top_k_experts",
    expert_width_key="moe_intermediate_size",
    text_config_attr="text_config",
    non_text_prefixes=("model.vision_tower.", "model.embed_vision.", "model.audio_tower.", "model.embed_audio."),
    gate_definition=("|w| where w = softmax probability renormalised over the top-k experts, "
                     "times router.per_expert_scale: the weight Gemma 4 applies to the expert's output"),
    moe_switch_key="enable_moe_block",   # false: dense layers, even if num_experts is set
    thinking_markers=("<|channel>", "<channel|>"),   # "<|channel>thought\n ... <channel|>" before the answer
    end_of_turn_markers=("<turn|>", "<end_of_turn>", "<|tool_response>"),   # a tool call stops at <|tool_response>
    flagships=("google/gemma-4-26b-a4b-it",),
)

class Gemma4Adapter(MoEAdapter):
    """Everything Gemma 4 needs is data: the base's routed-only observer and slicing serve it."""
    layout = GEMMA4_LAYOUT


GEMMA4 = register_adapter(Gemma4Adapter())

