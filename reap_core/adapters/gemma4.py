"""Gemma 4 (26B-A4B and smaller MoE variants): layout as data, plus the routed-only observer.

Each decoder layer has a dense MLP and an MoE block side by side. The router returns
(probs [T, E], top_k_weights [T, K], top_k_index [T, K]) where top_k_weights is the softmax
probability renormalised over the K chosen experts and multiplied by `per_expert_scale`:
exactly the weight the experts' outputs are combined with. That weight is our REAP gate.

Experts are fused 3-D tensors (gate_up_proj [E, 2I, H], down_proj [E, H, I]) and the module
returns only the weighted sum, so no hook can see one expert's output. The observer therefore
replaces the experts' forward, inside an `observing` block and for the observing thread only,
with a routed-only kernel (kernels.py: a per-expert loop on CPU, grouped matmuls on GPU) that
reduces each (token, expert) output before weighting to its norm and max |value|, and combines
the outputs as the model does (equal to ~1e-6).
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
from .kernels import KERNELS, loop_experts_forward, observer_kernel_name

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
    moe_switch_key="enable_moe_block",   # false: dense layers, even if num_experts is set
)

# experts module -> (layer index, record callback); per thread / per task, never global.
_OBSERVERS: ContextVar[dict[nn.Module, tuple[int, Callable[..., None]]] | None] = ContextVar(
    "reap_gemma4_observers", default=None)


def _dispatching_forward(self: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                         top_k_weights: torch.Tensor) -> torch.Tensor:
    observers = _OBSERVERS.get()
    entry = observers.get(self) if observers else None
    if entry is None:  # not observed in this thread: the model's own implementation, untouched
        return type(self).forward(self, hidden_states, top_k_index, top_k_weights)
    layer, record = entry
    kernel = KERNELS[observer_kernel_name(self.down_proj.device, self.down_proj.dtype)]
    return kernel(self, hidden_states, top_k_index, top_k_weights, layer, record)


ALL_EXPERTS_FUNCTIONS.register(SORTED_IMPLEMENTATION, loop_experts_forward)


class Gemma4Adapter(MoEAdapter):
    layout = GEMMA4_LAYOUT

    def prepare(self, model: nn.Module) -> None:
        # On CPU torch's grouped_mm is slower than a per-expert loop (benchmarks/observer_overhead.py);
        # on GPUs transformers' default grouped_mm stays, and only the observer uses the loop.
        if next(model.parameters()).device.type == "cpu":
            model.set_experts_implementation(SORTED_IMPLEMENTATION)

    def after_slice(self, layer: nn.Module, n_kept: int) -> None:
        # The experts module loops over num_experts: left stale, grouped_mm fails on the sliced tensors
        # and the eager path silently indexes experts that are gone.
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

