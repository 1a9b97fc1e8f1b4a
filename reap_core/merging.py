"""Stage 6c — merged experts: a MergePlan applied to a loaded model, for chat, evaluation and export.

A merged model is not a masked view: its experts have new weights. `build_merged` computes them once,
as a copy of the MoE layers' experts only (E' merged experts per layer, beside the original's E: the
memory it costs is `MergedModel.nbytes`, shown in the app), and the view routes the original model's
tokens to them:
  - the router is the original one with non-representatives masked out (masking.py): a merged
    expert keeps its representative's router row, scale and bias, so routing equals the sliced model's;
  - each MoE layer's experts module computes with the merged weights instead of its own, through the
    per-thread override the adapters' dispatcher honours (adapters/base.py). Nothing on the model
    changes: other threads, and other rows of a batch, still see the original experts.

Permutation alignment (M-SMoE, REAM): an expert's intermediate neurons can be permuted without
changing it, so averaging two experts neuron by neuron mixes unrelated neurons unless they are
matched first. Each member is matched to its representative by weight matching: neuron features =
(gate row, up row, down column), the permutation maximising the summed inner products (Hungarian
algorithm, scipy's linear_sum_assignment). Biases of the up projection follow the permutation.

Which tensors: the family's expert tensors under its experts module (adapters: `expert_tensors`);
the neuron axis is known for gate_up_proj / up_proj (+ biases) and down_proj in either storage
(`is_transposed`) and gate/up layout (concatenated, or interleaved: gpt-oss). Quantized experts
(FP8 / MXFP4 kept packed) cannot be averaged: refused with a message.
"""

from __future__ import annotations

import copy
import time
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from .adapters.base import EXPERT_OVERRIDES, install_dispatch
from .errors import InvalidPlan
from .masking import check_plan_fits, masked_rows, masked_view
from .merge_plan import MergePlan
from .model import LoadedModel
from .plan import PruningPlan

_UP = ("gate_up_proj", "up_proj", "gate_up_proj_bias", "up_proj_bias")
_DOWN = ("down_proj",)


@dataclass
class MergedModel:
    plan: MergePlan
    tensors: list[dict[str, torch.Tensor]]   # per MoE layer row: experts-module attribute -> [E', ...] merged
    proxies: list[nn.Module]                 # per row: the experts module computing with those tensors
    slot_of: list[torch.Tensor]              # per row: [E] original id -> merged slot (-1: not a representative)
    nbytes: int
    seconds: float

    # read like a PruningPlan by reports (task accuracy, generation quality, fidelity points)
    @property
    def criterion(self) -> str:
        return self.plan.pruning.criterion

    @property
    def compression_ratio(self) -> float:
        return self.plan.compression_ratio

    @property
    def num_experts(self) -> int:
        return self.plan.pruning.num_experts

    @property
    def num_kept(self) -> int:
        return self.plan.pruning.num_kept

    @property
    def num_pruned(self) -> int:
        return self.plan.pruning.num_pruned


def _expert_attrs(loaded: LoadedModel) -> list[tuple[str, str, int]]:
    """(name in a decoder layer, attribute of the experts module, expert axis) of the expert weights."""
    prefix = loaded.adapter.layout.experts_module + "."
    return [(name, name[len(prefix):], axis) for name, axis in loaded.adapter.layout.expert_tensors
            if name.startswith(prefix)]


def _neuron_axis(experts: nn.Module, attr: str, ndim: int) -> int | None:
    """Axis of the intermediate neurons in this stored tensor (None: it has none, e.g. down_proj_bias)."""
    transposed = getattr(experts, "is_transposed", False)
    if attr in _UP:
        return 1 if ndim == 2 else (2 if transposed else 1)
    if attr in _DOWN:
        return 1 if transposed else 2
    if attr == "down_proj_bias":
        return None
    raise InvalidPlan(f"cannot align the neurons of expert tensor '{attr}': its layout is unknown here; "
                      f"merge without alignment")


def _up_index(perm: torch.Tensor, width: int, has_gate: bool, interleaved: bool) -> torch.Tensor:
    """Index into the fused up axis (2I with a gate, else I) that applies neuron permutation `perm`."""
    if not has_gate:
        return perm
    if interleaved:
        return torch.stack([2 * perm, 2 * perm + 1], dim=1).reshape(-1)
    return torch.cat([perm, perm + width])


def neuron_features(experts: nn.Module, e: int, interleaved: bool) -> torch.Tensor:
    """[I, F] per intermediate neuron of expert e: its gate row, up row and down column, float32."""
    from .adapters.kernels import _weights
    up, _, down, _ = _weights(experts)           # up [E, 2I or I, H], down [E, H, I]
    rows = up[e].detach().float()
    width = down.shape[-1]
    if getattr(experts, "has_gate", True):
        gate, upr = (rows[0::2], rows[1::2]) if interleaved else (rows[:width], rows[width:])
        parts = [gate, upr]
    else:
        parts = [rows]
    return torch.cat(parts + [down[e].detach().float().T], dim=1)


def align_permutation(reference: torch.Tensor, member: torch.Tensor) -> torch.Tensor:
    """perm with member neuron perm[i] matched to reference neuron i (maximum summed inner product)."""
    from scipy.optimize import linear_sum_assignment
    score = (reference @ member.T).detach().double().cpu().numpy()
    rows, cols = linear_sum_assignment(score, maximize=True)
    perm = np.empty(len(rows), dtype=np.int64)
    perm[rows] = cols
    return torch.from_numpy(perm)


def build_merged(loaded: LoadedModel, plan: MergePlan) -> MergedModel:
    """The merged experts of every MoE layer (weighted averages of each cluster, aligned if the plan says)."""
    start = time.perf_counter()
    check_plan_fits(loaded, plan.pruning)
    attrs = _expert_attrs(loaded)
    interleaved = loaded.adapter.layout.gate_up_interleaved
    tensors, proxies, slot_of, nbytes = [], [], [], 0
    for row, (_, layer) in enumerate(loaded.adapter.moe_layers(loaded.model)):
        experts = loaded.adapter.experts(layer)
        has_gate = getattr(experts, "has_gate", True)
        perms: dict[int, torch.Tensor] = {}
        if plan.align:
            for rep, members in zip(plan.pruning.kept[row], plan.members[row]):
                ref = neuron_features(experts, rep, interleaved)
                for m in members:
                    if m != rep:
                        perms[m] = align_permutation(ref, neuron_features(experts, m, interleaved))
        merged = {}
        with torch.no_grad():
            for _, attr, axis in attrs:
                source = getattr(experts, attr)
                if not source.dtype.is_floating_point or source.element_size() < 2:
                    raise InvalidPlan(f"the experts' '{attr}' is stored as {source.dtype}: quantized experts cannot "
                                      f"be averaged; load the model unquantized (bf16/float32) to merge")
                neuron = _neuron_axis(experts, attr, source.dim()) if plan.align else None
                slots = []
                for members, weights in zip(plan.members[row], plan.weights[row]):
                    acc = torch.zeros_like(source.select(axis, 0), dtype=torch.float32)
                    for m, w in zip(members, weights):
                        t = source.select(axis, m).float()
                        if m in perms and neuron is not None:
                            width = source.shape[neuron]
                            idx = perms[m] if attr in _DOWN else _up_index(
                                perms[m], width // 2 if has_gate else width, has_gate, interleaved)
                            t = t.index_select(neuron - (neuron > axis), idx.to(t.device))   # the expert axis is gone
                        acc += w * t
                    slots.append(acc.to(source.dtype))
                merged[attr] = torch.stack(slots, dim=axis)
                nbytes += merged[attr].numel() * merged[attr].element_size()
        proxy = copy.copy(experts)
        proxy.__dict__.pop("forward", None)       # the class's forward, not the dispatcher
        proxy._parameters, proxy._buffers = dict(experts._parameters), dict(experts._buffers)
        proxy._modules = dict(experts._modules)
        for attr, t in merged.items():
            if attr in proxy._buffers:
                proxy._buffers[attr] = t
            else:
                proxy._parameters[attr] = nn.Parameter(t, requires_grad=False)
        if hasattr(proxy, "num_experts"):
            proxy.num_experts = plan.pruning.num_kept
        slots_map = torch.full((loaded.num_experts,), -1, dtype=torch.long)
        slots_map[list(plan.pruning.kept[row])] = torch.arange(plan.pruning.num_kept)
        tensors.append(merged)
        proxies.append(proxy)
        slot_of.append(slots_map.to(experts.down_proj.device))
        install_dispatch(experts)
    return MergedModel(plan=plan, tensors=tensors, proxies=proxies, slot_of=slot_of, nbytes=nbytes,
                       seconds=time.perf_counter() - start)


def _run_merged(merged: MergedModel, row: int, hidden: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
    proxy = merged.proxies[row]
    slots = merged.slot_of[row].to(top_k_index.device)[top_k_index]
    return type(proxy).forward(proxy, hidden, slots, top_k_weights)


def _row_override(experts: nn.Module, row: int, per_row: list[MergedModel | None]):
    """The experts' forward when batch row r is under per_row[r] (a merged model, or None: its own)."""
    def forward(hidden: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        R = len(per_row)
        if R == 1:
            return _run_merged(per_row[0], row, hidden, top_k_index, top_k_weights)
        per = hidden.shape[0] // R      # the router and experts see the batch flattened row-major
        parts = []
        for r, merged in enumerate(per_row):
            sl = slice(r * per, (r + 1) * per)
            if merged is None:
                parts.append(type(experts).forward(experts, hidden[sl], top_k_index[sl], top_k_weights[sl]))
            else:
                parts.append(_run_merged(merged, row, hidden[sl], top_k_index[sl], top_k_weights[sl]))
        return torch.cat(parts)
    return forward


@contextmanager
def _overrides(loaded: LoadedModel, per_row: list[MergedModel | None]) -> Iterator[None]:
    if all(m is None for m in per_row):
        yield
        return
    table = {}
    for row, (_, layer) in enumerate(loaded.adapter.moe_layers(loaded.model)):
        experts = loaded.adapter.experts(layer)
        install_dispatch(experts)
        table[experts] = _row_override(experts, row, per_row)
    token = EXPERT_OVERRIDES.set({**(EXPERT_OVERRIDES.get() or {}), **table})
    try:
        yield
    finally:
        EXPERT_OVERRIDES.reset(token)


View = PruningPlan | MergedModel | None


def _routing_plan(view: View) -> PruningPlan | None:
    return view.plan.pruning if isinstance(view, MergedModel) else view


@contextmanager
def compressed_view(loaded: LoadedModel, view: View) -> Iterator[None]:
    """Inside the block, in this thread: the model pruned by a PruningPlan, merged by a MergedModel, or
    the original (None). What the chat, the evaluations and verification of a merged export run under."""
    with ExitStack() as stack:
        stack.enter_context(masked_view(loaded, _routing_plan(view)))
        stack.enter_context(_overrides(loaded, [view if isinstance(view, MergedModel) else None]))
        yield


@contextmanager
def compressed_rows(loaded: LoadedModel, views: Sequence[View]) -> Iterator[None]:
    """Row i of every batch under views[i] (pruned, merged or original), in one forward: the chat panes."""
    with ExitStack() as stack:
        stack.enter_context(masked_rows(loaded, [_routing_plan(v) for v in views]))
        stack.enter_context(_overrides(loaded, [v if isinstance(v, MergedModel) else None for v in views]))
        yield


def export_overrides(loaded: LoadedModel, merged: MergedModel) -> dict[str, torch.Tensor]:
    """state_dict name -> the full-E expert tensor with each representative's rows replaced by its
    merged expert: an export slices the representatives from these, exactly as it slices a prune."""
    path, _ = loaded.adapter.layer_list(loaded.model)
    out = {}
    for row, (idx, layer) in enumerate(loaded.adapter.moe_layers(loaded.model)):
        experts = loaded.adapter.experts(layer)
        kept = torch.as_tensor(merged.plan.pruning.kept[row], dtype=torch.long)
        for name, attr, axis in _expert_attrs(loaded):
            full = getattr(experts, attr).detach().clone()
            full.index_copy_(axis, kept.to(full.device), merged.tensors[row][attr].to(full.device))
            out[f"{path}.{idx}.{name}"] = full
    return out
