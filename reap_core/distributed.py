"""Calibration split across processes: shards of the samples, and their statistics combined into one.

Two ways, one arithmetic (sums add, maxima take the maximum, top tokens keep the best by score):
  torch.distributed  `torchrun --nproc-per-node N -m reap_core calibrate …` (or `accelerate launch`):
                     each rank observes every N-th sample (of the length-sorted order, so ranks get
                     similar token counts) and the accumulators are reduced in place with
                     `all_reduce` (nccl on GPUs, gloo on CPU) before one file is written by rank 0.
  files              for schedulers without torchrun (Slurm arrays, Ray): `calibrate --shard i/n`
                     writes the statistics of shard i, and `merge-stats` combines the n files,
                     refusing files of other models, layers or calibration settings.

Either gives the statistics of a single-process run: counts exactly, float64 sums up to summation
order (~1e-16 relative; samples are computed the same way when the batch size is 1 in both runs,
otherwise batch composition changes float32 model arithmetic by ~1e-7, as any re-batching does).
"""

from __future__ import annotations

import os
import re
from typing import Sequence

import numpy as np
import torch

from .errors import StatisticsError
from .stats import MAX_STATS, SUM_STATS, ExpertStats

SHARD_KEY = "shard"          # calibration["shard"] = [i, n] in the file of one shard


def parse_shard(text: str) -> tuple[int, int]:
    """'2/8' -> (1, 8): shards are numbered from 1 for people, from 0 inside."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match:
        raise StatisticsError(f"--shard takes i/n (e.g. 1/4), not {text!r}")
    i, n = int(match.group(1)), int(match.group(2))
    if n < 1 or not 1 <= i <= n:
        raise StatisticsError(f"--shard {text}: i must be between 1 and n (n >= 1)")
    return i - 1, n


def shard_samples(lengths: Sequence[int], index: int, count: int) -> list[int]:
    """The samples of shard `index` of `count`: every count-th of the length-sorted order, so every
    shard gets long and short samples alike."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return sorted(order[index::count])


def keep_best(scores: torch.Tensor, tokens: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the n best (score, token) pairs: highest score first, equal scores by token id (the
    earlier token), so every way of splitting the work keeps the same ones."""
    by_token = tokens.argsort(dim=-1, stable=True)
    scores, tokens = scores.gather(-1, by_token), tokens.gather(-1, by_token)
    best = scores.argsort(dim=-1, descending=True, stable=True)[..., :n]
    return scores.gather(-1, best), tokens.gather(-1, best)


# --- torch.distributed ------------------------------------------------------------------------

def world() -> tuple[int, int]:
    """(rank, world size) of an initialised process group, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def launched_by_torchrun() -> bool:
    """torchrun and accelerate launch set these for every rank."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_from_environment() -> torch.device:
    """Join the process group torchrun / accelerate launch set up; the device this rank computes on."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend)
    return device


def all_reduce_accumulator(sums: dict[str, torch.Tensor], maxes: dict[str, torch.Tensor],
                           top_score: torch.Tensor, top_token: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reduce one rank's accumulators into every rank's: sums added, maxima maxed (in place), and the
    best top tokens of all ranks kept. Returns the merged (top_score, top_token)."""
    dist = torch.distributed
    for t in sums.values():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    for t in maxes.values():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    n = top_score.shape[-1]
    scores = [torch.empty_like(top_score) for _ in range(dist.get_world_size())]
    tokens = [torch.empty_like(top_token) for _ in range(dist.get_world_size())]
    dist.all_gather(scores, top_score)
    dist.all_gather(tokens, top_token)
    return keep_best(torch.cat(scores, dim=-1), torch.cat(tokens, dim=-1), n)


# --- files --------------------------------------------------------------------------------------

def merge_stats(parts: Sequence[ExpertStats]) -> ExpertStats:
    """The statistics of the whole calibration from the files of its n shards (any order)."""
    if not parts:
        raise StatisticsError("give the statistics files of every shard")
    first = parts[0]
    shards = []
    for p in parts:
        shard = p.calibration.get(SHARD_KEY)
        if not (isinstance(shard, list) and len(shard) == 2):
            raise StatisticsError(f"statistics of {p.model_id} are not a shard (no calibration.shard): "
                                  "merge-stats combines the files `calibrate --shard i/n` writes")
        shards.append(tuple(shard))
        for what, mine, theirs in (
                ("model", p.model_id, first.model_id),
                ("MoE layers", p.layer_indices, first.layer_indices),
                ("experts per layer", p.num_experts, first.num_experts), ("top-k", p.top_k, first.top_k),
                ("categories", p.categories, first.categories), ("expert groups", p.expert_groups, first.expert_groups),
                ("calibration fingerprint", p.fingerprint(), first.fingerprint()),
                ("calibration", p.calibration.get("spec"), first.calibration.get("spec")),
                ("max tokens per sample", p.calibration.get("max_tokens"), first.calibration.get("max_tokens")),
                ("top tokens kept", p.top_tokens is None, first.top_tokens is None)):
            if mine != theirs:
                raise StatisticsError(f"these files come from different runs: {what} {_short(theirs)} in one, "
                                      f"{_short(mine)} in another; refusing to merge")
    n = shards[0][1]
    if sorted(shards) != [(i, n) for i in range(n)]:
        have = ", ".join(f"{i + 1}/{m}" for i, m in sorted(shards))
        raise StatisticsError(f"need each of the shards 1/{n} … {n}/{n} exactly once; got {have}")
    arrays = {}
    for name in first.arrays:
        stack = np.stack([p.arrays[name] for p in parts])
        arrays[name] = stack.max(axis=0) if name in MAX_STATS else stack.sum(axis=0)
    missing = set(SUM_STATS + MAX_STATS) - set(arrays)
    if missing:
        raise StatisticsError(f"the shard files lack the statistics {', '.join(sorted(missing))}")
    calibration = {k: v for k, v in first.calibration.items() if k != SHARD_KEY}
    keep = int(first.calibration.get("top_tokens_per_expert", 0) or 0)
    return ExpertStats(model_id=first.model_id, layer_indices=list(first.layer_indices),
                       num_experts=first.num_experts, top_k=first.top_k, categories=list(first.categories),
                       arrays=arrays, tokens_per_category=[sum(t) for t in zip(*(p.tokens_per_category for p in parts))],
                       calibration=calibration, top_tokens=_merge_top_tokens([p.top_tokens for p in parts], keep),
                       expert_groups=first.expert_groups)


def _merge_top_tokens(per_part: list[list | None], keep: int) -> list | None:
    """Per expert, the `keep` best-scoring snippets of all shards (what one run would have kept)."""
    if per_part[0] is None:
        return None
    merged = []
    for layer_parts in zip(*per_part):
        merged.append([sorted((it for items in expert_parts for it in items),
                              key=lambda it: (-it["score"], it.get("at", [0, 0])))[:keep]
                       for expert_parts in zip(*layer_parts)])
    return merged


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
