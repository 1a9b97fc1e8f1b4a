"""Routed-only experts forwards: the MoE output from the routed (token, expert) pairs only, and, for
the observer, each pair's ||f_j(x)||_2 and max |f_j(x)| (f_j(x) = expert j's output before weighting).

Every function has transformers' experts-forward signature `(experts, hidden_states [T, H],
top_k_index [T, K], top_k_weights [T, K])` plus `layer` and `record`; with `record`, one call per
layer: record(layer, expert_ids[S], token_index[S], gates[S], out_norm[S], out_absmax[S]), pairs
sorted by expert (S = T*K). They honour the flags transformers' `use_experts_implementation` puts on
every fused experts module (`has_gate`, `has_bias`, `is_transposed`, `_apply_gate`,
`has_post_expert_norm`), so one kernel
serves every family whose experts module transformers fuses.

Two kernels, chosen per device by measurement (benchmarks/observer_overhead.py, gpu_check.sh):
  loop     pairs sorted by expert once, then one matmul pair per expert that has tokens: the
           fastest on CPU for calibration-sized inputs (torch's CPU grouped_mm is 1.3-1.5x slower
           there); one host sync per layer for the per-expert counts. Below LOOP_MIN_PAIRS pairs
           (decoding: one token per batch row) it hands over to `grouped`, whose op count does not
           grow with the number of experts hit, so a second chat pane in the batch adds little.
  grouped  pairs sorted by expert, then torch's grouped matmul over all experts at once (what
           transformers' default `grouped_mm` runs on GPUs), in chunks of pairs that bound the
           intermediate [pairs, 2I] activations (the [T*K, H] float32 output is as large as the one
           transformers' default allocates); no host sync at all: for GPUs.
Rejected: the reference implementation's every-expert-on-every-token (~(1 + E/K)x the MoE cost, an
E*T*H buffer); `batched_mm` for long inputs (copies one weight matrix per routed pair: out of memory).
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

Record = Callable[..., None]
LOOP_MIN_PAIRS = 64                     # fewer routed pairs than this (decode steps): the grouped kernel
GROUPED_CHUNK_BYTES = 512 * 2 ** 20     # transient activations per chunk of pairs in the grouped kernel
_grouped_mm = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)

# Expert-merging signals (reap_core.merge_signals) need each routed expert's whole output f_j(x), not
# only its norm: while a sink is set in this thread, observing kernels hand it
# (layer, expert_ids [n], token_index [n], f [n, H]) for every group of pairs they compute.
OUTPUT_SINK: ContextVar[Callable[..., None] | None] = ContextVar("reap_output_sink", default=None)


def _weights(experts: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """(up-or-gate_up [E, out, in], its bias, down [E, out, in], its bias), whatever the storage."""
    up = experts.gate_up_proj if getattr(experts, "has_gate", True) else experts.up_proj
    up_bias = down_bias = None
    if getattr(experts, "has_bias", False):
        up_bias = experts.gate_up_proj_bias if getattr(experts, "has_gate", True) else experts.up_proj_bias
        down_bias = experts.down_proj_bias
    down = experts.down_proj
    if getattr(experts, "is_transposed", False):   # stored [E, in, out]
        up, down = up.transpose(1, 2), down.transpose(1, 2)
    return up, up_bias, down, down_bias


def _activate(experts: nn.Module, h: torch.Tensor) -> torch.Tensor:
    return experts._apply_gate(h) if getattr(experts, "has_gate", True) else experts.act_fn(h)


def _finish(experts: nn.Module, f: torch.Tensor) -> torch.Tensor:
    """f_j(x) as the model defines it: a post-expert norm where the family has one."""
    return experts.post_expert_norm(f) if getattr(experts, "has_post_expert_norm", False) else f


def _sorted_pairs(top_k_index: torch.Tensor, top_k_weights: torch.Tensor):
    """(expert_ids [S], token_index [S], gates [S], perm [S]) of the routed pairs, grouped by expert;
    perm[i] = the flat [T*K] position of sorted pair i."""
    K = top_k_index.size(-1)
    expert_ids, perm = torch.sort(top_k_index.reshape(-1))
    return expert_ids, perm // K, top_k_weights.reshape(-1)[perm], perm


def _reductions(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(||f||_2, max |f|) per row, in float32, without a float32 or abs() copy of f."""
    low, high = torch.aminmax(f, dim=-1)
    return torch.linalg.vector_norm(f, dim=-1, dtype=torch.float32), torch.maximum(high, -low).float()


def loop_experts_forward(experts: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                         top_k_weights: torch.Tensor, layer: int = -1, record: Record | None = None) -> torch.Tensor:
    """Per-expert loop over the sorted pairs; each expert's tokens gathered, computed and combined
    while they are in cache, only the per-pair reductions kept (never an [S, H] buffer)."""
    if top_k_index.numel() < LOOP_MIN_PAIRS and _grouped_mm is not None:
        return grouped_experts_forward(experts, hidden_states, top_k_index, top_k_weights, layer, record)
    up, up_bias, down, down_bias = _weights(experts)
    expert_ids, token_index, gates, _ = _sorted_pairs(top_k_index, top_k_weights)
    counts = torch.bincount(expert_ids, minlength=up.shape[0]).tolist()
    combined = torch.zeros_like(hidden_states, dtype=down.dtype)
    if record is not None:
        norms = hidden_states.new_empty(expert_ids.shape, dtype=torch.float32)
        absmax = torch.empty_like(norms)
    sink = OUTPUT_SINK.get() if record is not None else None
    start = 0
    for e, n in enumerate(counts):
        if n == 0:
            continue
        end = start + n
        tokens = token_index[start:end]
        h = _activate(experts, F.linear(hidden_states[tokens], up[e], None if up_bias is None else up_bias[e]))
        f = _finish(experts, F.linear(h, down[e], None if down_bias is None else down_bias[e]))   # [n, H] = f_e(x)
        if record is not None:
            norms[start:end], absmax[start:end] = _reductions(f)
        if sink is not None:
            sink(layer, expert_ids[start:end], tokens, f)
        combined.index_add_(0, tokens, f * gates[start:end, None].to(f.dtype))
        start = end
    if record is not None:
        record(layer, expert_ids, token_index, gates, norms, absmax)
    return combined.to(hidden_states.dtype)


def grouped_experts_forward(experts: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                            top_k_weights: torch.Tensor, layer: int = -1, record: Record | None = None,
                            chunk_bytes: int = GROUPED_CHUNK_BYTES) -> torch.Tensor:
    """torch's grouped matmul over the sorted pairs, chunk by chunk; no host sync.

    A chunk [a, b) of the sorted pairs is still grouped by expert: its group ends are the global
    ends clamped to [a, b] and shifted by a, computed on the device. The weighted outputs go back
    to their [T, K] slots and are summed over K in float32, as transformers' grouped_mm does (the
    same numbers as the plain forward, deterministic, no atomics)."""
    up, up_bias, down, down_bias = _weights(experts)
    E, (T, K), H = up.shape[0], top_k_index.shape, hidden_states.shape[-1]
    S = T * K
    expert_ids, token_index, gates, perm = _sorted_pairs(top_k_index, top_k_weights)
    counts = torch.zeros(E, dtype=torch.int64, device=expert_ids.device)
    counts.index_add_(0, expert_ids, torch.ones_like(expert_ids))
    ends = counts.cumsum(0)                                                     # [E] on the device
    per_pair = (up.shape[1] + down.shape[2]) * hidden_states.element_size() + 8 * H
    chunk = max(1, chunk_bytes // per_pair)
    weighted = torch.empty(S, H, dtype=torch.float32, device=hidden_states.device)   # [T*K, H], original order
    if record is not None:
        norms = torch.empty(S, dtype=torch.float32, device=hidden_states.device)
        absmax = torch.empty_like(norms)
    sink = OUTPUT_SINK.get() if record is not None else None
    for a in range(0, S, chunk):
        b = min(a + chunk, S)
        offs = (ends.clamp(a, b) - a).to(torch.int32)
        e = expert_ids[a:b]
        h = _grouped_mm(hidden_states[token_index[a:b]].to(up.dtype), up.transpose(1, 2), offs=offs)
        if up_bias is not None:
            h = h + up_bias[e]
        f = _grouped_mm(_activate(experts, h).to(down.dtype), down.transpose(1, 2), offs=offs)   # [b-a, H]
        if down_bias is not None:
            f = f + down_bias[e]
        f = _finish(experts, f)
        if record is not None:
            norms[a:b], absmax[a:b] = _reductions(f)
        if sink is not None:
            sink(layer, e, token_index[a:b], f)
        weighted[perm[a:b]] = (f * gates[a:b, None]).float()     # bf16 gates (Qwen3) or float32 (Gemma 4)
    if record is not None:
        record(layer, expert_ids, token_index, gates, norms, absmax)
    return weighted.view(T, K, H).sum(dim=1).to(hidden_states.dtype)


KERNELS = {"loop": loop_experts_forward, "grouped": grouped_experts_forward}


def observer_kernel_name(device: torch.device | str, dtype: torch.dtype = torch.bfloat16) -> str:
    """The measured-fastest kernel for a device: `loop` on CPU, `grouped` on CUDA in bf16 (what torch's
    CUDA grouped matmul takes); REAP_OBSERVER_KERNEL=loop|grouped overrides (to measure, to work around)."""
    forced = os.environ.get("REAP_OBSERVER_KERNEL", "").strip()
    if forced:
        if forced not in KERNELS:
            raise ValueError(f"REAP_OBSERVER_KERNEL={forced!r}; choose one of {', '.join(KERNELS)}")
        return forced
    if torch.device(device).type == "cuda" and dtype == torch.bfloat16 and _grouped_mm is not None:
        return "grouped"
    return "loop"
