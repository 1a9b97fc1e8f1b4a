"""Stage 6a — the masked view: a PruningPlan applied to a loaded model per call, without copying it.

Pruned experts get a router logit of -inf before the softmax, so they get probability 0, are
never in the top-k, and the renormalised weights equal those of the sliced model (measured:
max |delta logits| ~1e-6 in float32, same greedy tokens). One copy of the weights therefore
serves the original and the pruned chat panes and every slider position.

The mask lives in a ContextVar, never on the model: each thread (and asyncio task) sees only
the mask it set, so two sessions at different ratios can generate on one model object at once.
Threads start with an empty context: a worker thread must enter `masked_view` itself.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

import torch
from torch import nn

from .errors import InvalidPlan
from .model import LoadedModel
from .plan import PruningPlan

# router-logits module -> bool [E] (True = pruned), for the current thread / task only
_ACTIVE_MASKS: ContextVar[dict[nn.Module, torch.Tensor] | None] = ContextVar("reap_active_masks", default=None)


def _mask_logits_hook(module: nn.Module, inputs, output: torch.Tensor):
    masks = _ACTIVE_MASKS.get()
    if not masks:
        return None
    mask = masks.get(module)
    if mask is None:
        return None
    return output.masked_fill(mask.to(output.device), float("-inf"))


def ensure_mask_hooks(loaded: LoadedModel) -> None:
    """Install the (pass-through unless a mask is active) hook once per router."""
    for _, layer in loaded.adapter.moe_layers(loaded.model):
        router = loaded.adapter.router_logits(layer)
        if not getattr(router, "_reap_mask_hook", False):
            router.register_forward_hook(_mask_logits_hook)
            router._reap_mask_hook = True


def check_plan_fits(loaded: LoadedModel, plan: PruningPlan) -> None:
    if plan.num_experts != loaded.num_experts or list(plan.layer_indices) != loaded.moe_layer_indices:
        raise InvalidPlan(f"this plan is for {len(plan.layer_indices)} MoE layers x {plan.num_experts} experts, "
                          f"but the model has {len(loaded.moe_layer_indices)} x {loaded.num_experts}")


@contextmanager
def masked_view(loaded: LoadedModel, plan: PruningPlan | None) -> Iterator[None]:
    """Inside the block, in this thread, the model behaves as pruned by `plan` (None = original)."""
    if plan is None:
        token = _ACTIVE_MASKS.set(None)
    else:
        check_plan_fits(loaded, plan)
        ensure_mask_hooks(loaded)
        pruned = plan.pruned_mask()
        masks = {}
        for row, (_, layer) in enumerate(loaded.adapter.moe_layers(loaded.model)):
            router = loaded.adapter.router_logits(layer)
            masks[router] = torch.as_tensor(pruned[row], device=router.weight.device)
        token = _ACTIVE_MASKS.set(masks)
    try:
        yield
    finally:
        _ACTIVE_MASKS.reset(token)
