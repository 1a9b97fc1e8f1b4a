"""Gemma 4 (26B-A4B and smaller MoE variants): layout as data, plus the routed-only observer.

Each decoder layer has a dense MLP and an MoE block side by side. The router returns
(probs [T, E], top_k_weights [T, K], top_k_index [T, K]) where top_k_weights is the softmax
probability renormalised over the K chosen experts and multiplied by `per_expert_scale`:
exactly the weight the experts' outputs are combined with. That weight is our REAP gate.

Experts are fused 3-D tensors (gate_up_proj [E, 2I, H], down_proj [E, H, I]) and the module
returns only the weighted sum, so no hook can see one expert's output. The observer therefore
replaces the experts' forward, inside an `observing` block and for the observing thread only,
with a routed-only grouped computation that records each (token, expert) output before
weighting and then combines them as the model does (outputs equal to ~1e-6). Rejected: running
all E experts on every token (the reference implementation: ~(1 + E/K)x the MoE cost and an
E*T*H buffer), and `batched_mm` (copies one weight matrix per routed pair: out of memory).
"""

from __future__ import annotations

import types
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator

import torch
from torch import nn

from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

from .base import MoEAdapter, MoELayout, register_adapter

SORTED_IMPLEMENTATION = "reap_sorted"

GEMMA4_LAYOUT = MoELayout(
    family="gemma4",
    model_types=("gemma4", "gemma4_text"),
    layer_list_paths=("model.language_model.layers", "model.layers", "language_model.layers", "layers"),
    checkpoint_layer_prefixes=("model.language_model.layers.{i}.", "model.layers.{i}."),
    router_logits_module="router.proj",
    expert_tensors=(
        ("router.proj.weight", 0),        # [E, H]
        ("router.per_expert_scale", 0),   # [E]
        ("experts.gate_up_proj", 0),      # [E, 2I, H]
        ("experts.down_proj", 0),         # [E, H, I]
    ),
    experts_module="experts",
    num_experts_key="num_experts",
    top_k_key="top_k_experts",
    text_config_attr="text_config",
    non_text_prefixes=("model.vision_tower.", "model.embed_vision.", "model.audio_tower.", "model.embed_audio."),
    gate_definition=("|w| where w = softmax probability renormalised over the top-k experts, "
                     "times router.per_expert_scale: the weight Gemma 4 applies to the expert's output"),
)

# experts module -> (layer index, record callback); per thread / per task, never global.
_OBSERVERS: ContextVar[dict[nn.Module, tuple[int, Callable[..., None]]] | None] = ContextVar(
    "reap_gemma4_observers", default=None)


def _grouped_expert_outputs(experts: nn.Module, x_sorted: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """f_j(x) [S, H] for pairs sorted by expert. grouped_mm on GPUs; a plain per-expert loop of
    matmuls on CPU, where torch's grouped_mm is ~5x slower than the loop (measured, torch 2.13)."""
    if x_sorted.device.type == "cuda":
        from transformers.integrations.moe import _grouped_linear  # pinned transformers: the default GPU kernel
        out = _grouped_linear(x_sorted, experts.gate_up_proj, offsets)          # [S, 2I]
        return _grouped_linear(experts._apply_gate(out), experts.down_proj, offsets)
    out = x_sorted.new_empty(x_sorted.shape)
    start = 0
    for e, end in enumerate(offsets.tolist()):
        if end > start:
            h = experts._apply_gate(x_sorted[start:end] @ experts.gate_up_proj[e].T)  # [n, I]
            torch.mm(h, experts.down_proj[e].T, out=out[start:end])                  # [n, H]
        start = end
    return out


def routed_experts_forward(experts: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                           top_k_weights: torch.Tensor, layer: int = -1,
                           record: Callable[..., None] | None = None) -> torch.Tensor:
    """The experts' forward on routed pairs only; with `record`, one call with their outputs.

    Registered as the experts implementation "reap_sorted" (ExpertsInterface signature), which
    load_model picks on CPU: same results as the default, faster there."""
    num_tokens, hidden_dim = hidden_states.shape          # [T, H]
    num_top_k = top_k_index.size(-1)                        # K
    expert_ids_g, perm = torch.sort(top_k_index.reshape(-1))  # [S] pairs grouped by expert
    token_index_g = perm // num_top_k                       # [S] token of each grouped pair
    tokens_per_expert = torch.bincount(expert_ids_g, minlength=experts.num_experts)
    offsets = torch.cumsum(tokens_per_expert, dim=0, dtype=torch.int32)
    out = _grouped_expert_outputs(experts, hidden_states[token_index_g], offsets)   # [S, H] = f_j(x)
    gates_g = top_k_weights.reshape(-1)[perm]
    if record is not None:
        record(layer, expert_ids_g, token_index_g, gates_g, out)
    combined = torch.zeros_like(hidden_states, dtype=out.dtype)
    combined.index_add_(0, token_index_g, out * gates_g.unsqueeze(-1).to(out.dtype))
    return combined.to(hidden_states.dtype)


def _dispatching_forward(self: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                         top_k_weights: torch.Tensor) -> torch.Tensor:
    observers = _OBSERVERS.get()
    entry = observers.get(self) if observers else None
    if entry is None:  # not observed in this thread: the model's own implementation, untouched
        return type(self).forward(self, hidden_states, top_k_index, top_k_weights)
    layer, record = entry
    return routed_experts_forward(self, hidden_states, top_k_index, top_k_weights, layer, record)


ALL_EXPERTS_FUNCTIONS.register(SORTED_IMPLEMENTATION, routed_experts_forward)


class Gemma4Adapter(MoEAdapter):
    layout = GEMMA4_LAYOUT

    def prepare(self, model: nn.Module) -> None:
        if next(model.parameters()).device.type == "cpu":
            model.set_experts_implementation(SORTED_IMPLEMENTATION)

    def after_slice(self, layer: nn.Module, n_kept: int) -> None:
        # Forgetting this makes grouped_mm fail and eager silently wrong (DESIGN.md).
        layer.experts.num_experts = n_kept

    @contextmanager
    def observing(self, model: nn.Module, record: Callable[..., None]) -> Iterator[None]:
        layers = self.moe_layers(model)
        for _, layer in layers:
            experts = layer.experts
            if not getattr(experts, "_reap_dispatch_installed", False):
                # Instance-level forward: pass-through unless this thread observes this module.
                experts.forward = types.MethodType(_dispatching_forward, experts)
                experts._reap_dispatch_installed = True
        current = dict(_OBSERVERS.get() or {})
        current.update({layer.experts: (idx, record) for idx, layer in layers})
        token = _OBSERVERS.set(current)
        try:
            yield
        finally:
            _OBSERVERS.reset(token)


GEMMA4 = register_adapter(Gemma4Adapter())

