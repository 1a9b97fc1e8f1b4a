"""Stage 6a — the masked view: PruningPlans applied to a loaded model per call, without copying it.

Pruned experts are taken out of what the router's selection sees (a -inf logit before a softmax;
a -inf selection score where a bias takes part in the choice: adapters/routing.py), so they are
never in the top-k and the weights equal those of the sliced model (measured for every family:
max |delta logits| ~1e-6 in float32, same greedy tokens; tests/test_families.py). One copy of the
weights therefore serves the original and the pruned chat panes and every slider position.

Two forms:
  masked_view(loaded, plan)        every row of every batch under one plan (None = original)
  masked_rows(loaded, [p0, p1..])  row i of every batch under plans[i]: the two chat panes, or
                                   several sweep points, in ONE forward / ONE generate call

Per-row masks are [R, E]; the router sees hidden states flattened row-major to [R*T, E] logits,
so token n belongs to row n // T and the mask is expanded over each row's tokens.
Group-limited routing (DeepSeek-V3): plans prune the same number of experts in every group, so a
group's score (its two best) is the sliced model's.

The masks live in a ContextVar, never on the model: each thread (and asyncio task) sees only
the masks it set, so two sessions at different ratios can generate on one model object at once.
Threads start with an empty context: a worker thread must enter the view itself.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import nn

from .errors import InvalidPlan
from .model import LoadedModel
from .plan import PruningPlan



@dataclass(frozen=True)
class _Masks:
    per_router: dict[nn.Module, torch.Tensor]   # adapter.mask_target -> bool [E] or [R, E], True = pruned
    rows: int | None                            # R for per-row masks, None for one mask for every row


_ACTIVE_MASKS: ContextVar[_Masks | None] = ContextVar("reap_active_masks", default=None)   # this thread / task


def _lookup(module: nn.Module, n_tokens: int) -> torch.Tensor | None:
    """The mask this thread set for `module`: [E] for every token, or [N, E] with the per-row masks
    expanded over each row's tokens (the router sees the batch flattened row-major); None = no mask."""
    active = _ACTIVE_MASKS.get()
    mask = active.per_router.get(module) if active else None
    if mask is None or active.rows is None:
        return mask
    return mask.repeat_interleave(n_tokens // active.rows, dim=0)


def _check_rows_hook(module: nn.Module, args, kwargs) -> None:
    """Per-row masks need exactly one batch row per plan: checked where the batch enters the model."""
    active = _ACTIVE_MASKS.get()
    if active is None or active.rows is None:
        return None
    batch = kwargs.get("input_ids", args[0] if args else None)
    if batch is None:
        batch = kwargs.get("inputs_embeds")
    if batch is not None and batch.shape[0] != active.rows:
        raise InvalidPlan(f"per-row masks for {active.rows} rows, but the batch has {batch.shape[0]}: "
                          "the batch must have exactly one row per plan")
    return None


def ensure_mask_hooks(loaded: LoadedModel) -> None:
    """Install the (pass-through unless a mask is active) routing masks once per layer, and the row
    check once on the model; how a layer is masked is its family's business (adapter.install_masking)."""
    if not getattr(loaded.model, "_reap_rows_hook", False):
        loaded.model.register_forward_pre_hook(_check_rows_hook, with_kwargs=True)
        loaded.model._reap_rows_hook = True
    for _, layer in loaded.adapter.moe_layers(loaded.model):
        loaded.adapter.install_masking(layer, _lookup)


def check_plan_fits(loaded: LoadedModel, plan: PruningPlan) -> None:
    if plan.num_experts != loaded.num_experts or list(plan.layer_indices) != loaded.moe_layer_indices:
        raise InvalidPlan(f"this plan is for {len(plan.layer_indices)} MoE layers x {plan.num_experts} experts, "
                          f"but the model has {len(loaded.moe_layer_indices)} x {loaded.num_experts}")


def _router_masks(loaded: LoadedModel, plans: Sequence[PruningPlan | None], per_row: bool) -> _Masks | None:
    """router module -> mask; None when no plan prunes anything (the original, untouched)."""
    if all(p is None for p in plans):
        return None
    for p in plans:
        if p is not None:
            check_plan_fits(loaded, p)
    ensure_mask_hooks(loaded)
    E = loaded.num_experts
    pruned = [p.pruned_mask() if p is not None else None for p in plans]     # each [L, E] or None
    masks = {}
    for layer_row, (_, layer) in enumerate(loaded.adapter.moe_layers(loaded.model)):
        target = loaded.adapter.mask_target(layer)
        rows = [torch.as_tensor(m[layer_row]) if m is not None else torch.zeros(E, dtype=torch.bool) for m in pruned]
        mask = torch.stack(rows) if per_row else rows[0]
        device = target.weight.device
        masks[target] = mask.to(loaded.input_device if device.type == "meta" else device)   # meta: layer on disk
    return _Masks(masks, len(plans) if per_row else None)


@contextmanager
def _active(masks: _Masks | None) -> Iterator[None]:
    token = _ACTIVE_MASKS.set(masks)
    try:
        yield
    finally:
        _ACTIVE_MASKS.reset(token)


@contextmanager
def masked_view(loaded: LoadedModel, plan: PruningPlan | None) -> Iterator[None]:
    """Inside the block, in this thread, the model behaves as pruned by `plan` (None = original)."""
    with _active(_router_masks(loaded, [plan], per_row=False)):
        yield


@contextmanager
def masked_rows(loaded: LoadedModel, plans: Sequence[PruningPlan | None]) -> Iterator[None]:
    """Inside the block, in this thread, row i of every batch behaves as pruned by plans[i] (None =
    original). Every forward must then have exactly len(plans) rows (generate without beams keeps that)."""
    if not plans:
        raise InvalidPlan("give at least one plan (None = original) per batch row")
    with _active(_router_masks(loaded, list(plans), per_row=True)):
        yield
