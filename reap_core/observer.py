"""Stage 3 — observe: a model and a CalibrationSet in, ExpertStats out, in ONE normal forward pass.

Only routed (token, expert) pairs are measured: the adapter reduces each routed expert's output
f_j(x), as the model computes it anyway, to two numbers per pair (||f||, max |f|) and hands them
with the gates to the recorder, which adds them into float64 [C, L*E] accumulators. Memory is
O(categories x layers x experts) whatever the number of tokens; the transient per-layer work is
O(S) beside the expert matmuls. Padding tokens are computed by the forward but never counted.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from . import distributed
from .calibration import CalibrationSet, iter_batches
from .model import LoadedModel
from .stats import MAX_STATS, SUM_STATS, ExpertStats

TOP_TOKENS_PER_EXPERT = 6
_POS_STRIDE = 1 << 20  # global token id = sample * stride + position (max_tokens < 1M)


class _Accumulator:
    def __init__(self, layer_rows: dict[int, int], num_experts: int, num_categories: int,
                 device: torch.device, top_n: int):
        L, E, C = len(layer_rows), num_experts, num_categories
        self.rows, self.E, self.C, self.top_n = layer_rows, E, C, top_n
        self.sums = {k: torch.zeros(L, C * E, dtype=torch.float64, device=device) for k in SUM_STATS}
        self.maxes = {k: torch.zeros(L, C * E, dtype=torch.float64, device=device) for k in MAX_STATS}
        self.top_score = torch.full((L, E, top_n), -math.inf, dtype=torch.float32, device=device)
        self.top_token = torch.full((L, E, top_n), -1, dtype=torch.long, device=device)
        self.valid = self.category = self.global_token = None

    def state(self, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """Every running sum, maximum and top token by name (moved to `device` when given): what a
        checkpoint saves and what a separate GPU call hands back (sequential.py)."""
        state = {**self.sums, **self.maxes, "top_score": self.top_score, "top_token": self.top_token}
        return state if device is None else {name: t.to(device) for name, t in state.items()}

    def load_state(self, state: dict[str, torch.Tensor], device: torch.device | str) -> None:
        """Continue from `state` (no copy where it already is on `device`)."""
        self.sums = {name: state[name].to(device) for name in self.sums}
        self.maxes = {name: state[name].to(device) for name in self.maxes}
        self.top_score, self.top_token = state["top_score"].to(device), state["top_token"].to(device)

    def begin_batch(self, attention_mask: torch.Tensor, category_ids: torch.Tensor, sample_ids: torch.Tensor,
                    device: torch.device) -> None:
        B, T = attention_mask.shape  # the MoE sees hidden states flattened to [B*T, H], row-major
        self.valid = attention_mask.reshape(-1).bool().to(device)
        self.category = category_ids.repeat_interleave(T).to(device)
        positions = torch.arange(T).repeat(B)
        self.global_token = (sample_ids.repeat_interleave(T) * _POS_STRIDE + positions).to(device)

    def record(self, layer: int, expert_ids: torch.Tensor, token_index: torch.Tensor, gates: torch.Tensor,
               out_norm: torch.Tensor, out_absmax: torch.Tensor) -> None:
        """All [S]: the routed pairs of one MoE layer, ||f_j(x)|| and max |f_j(x)| of each.

        Padding pairs are zeroed (torch.where, so even a non-finite padding output counts 0), never
        dropped by boolean indexing: no device-to-host sync, so a GPU forward never waits on the recorder."""
        row = self.rows[layer]
        dev = self.valid.device
        e, t = expert_ids.to(dev), token_index.to(dev)
        valid = self.valid[t]
        zero = torch.zeros((), dtype=torch.float64, device=dev)
        only_valid = lambda x: torch.where(valid, x.to(dev).to(torch.float64), zero)  # noqa: E731
        norm, act = only_valid(out_norm), only_valid(out_absmax)       # ||f_j(x)||, max |f_j(x)|
        gate = only_valid(gates.abs())
        bucket = self.category[t] * self.E + e                         # [C*E] slot of each pair
        self.sums["count"][row].index_add_(0, bucket, valid.to(torch.float64))
        self.sums["gate_sum"][row].index_add_(0, bucket, gate)
        self.sums["norm_sum"][row].index_add_(0, bucket, norm)
        self.sums["gated_norm_sum"][row].index_add_(0, bucket, gate * norm)
        self.maxes["norm_max"][row].scatter_reduce_(0, bucket, norm, reduce="amax")   # zeros never win: all >= 0
        self.maxes["act_max"][row].scatter_reduce_(0, bucket, act, reduce="amax")
        score = torch.where(valid, (gate * norm).float(), torch.tensor(-math.inf, device=dev))
        self._keep_top_tokens(row, e, t, score)

    def _keep_top_tokens(self, row: int, e: torch.Tensor, t: torch.Tensor, score: torch.Tensor) -> None:
        n_flat = self.valid.numel()
        exact = torch.full((self.E, n_flat), -math.inf, dtype=torch.float32, device=score.device)
        exact[e, t] = score  # a token reaches an expert at most once per layer: no collisions
        # equal scores (repeated text) go to the earlier token, the same way in every run and shard: the
        # candidates' key shrinks by 1e-15 relative per position, far below float32's resolution (6e-8)
        tie = torch.arange(n_flat, device=score.device, dtype=torch.float64) * 1e-15
        key = torch.where(exact > 0, exact.double() * (1 - tie), torch.where(exact == 0, -tie, exact.double()))
        idx = key.topk(min(self.top_n, n_flat), dim=1).indices
        self.top_score[row], self.top_token[row] = distributed.keep_best(
            torch.cat([self.top_score[row], exact.gather(1, idx)], dim=1),
            torch.cat([self.top_token[row], self.global_token[idx]], dim=1), self.top_n)

    def arrays(self) -> dict[str, np.ndarray]:
        L = len(self.rows)
        out = {}
        for k, v in {**self.sums, **self.maxes}.items():
            out[k] = v.view(L, self.C, self.E).permute(1, 0, 2).cpu().numpy().copy()  # [C, L, E]
        return out


def _snippets(acc: _Accumulator, calib: CalibrationSet, tokenizer, context: int = 10) -> list:
    """Turn the best token ids per expert into readable text with a little context."""
    scores, tokens = acc.top_score.cpu().numpy(), acc.top_token.cpu().numpy()
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=False)  # noqa: E731
    result = []
    for row in range(scores.shape[0]):
        per_expert = []
        for e in range(scores.shape[1]):
            items = []
            for s, g in zip(scores[row, e], tokens[row, e]):
                if g < 0 or not np.isfinite(s):
                    continue
                sample, pos = divmod(int(g), _POS_STRIDE)
                ids = calib.token_ids[sample]
                items.append({"score": float(s), "at": [sample, pos],
                              "category": calib.categories[calib.category_ids[sample]],
                              "before": decode(ids[max(0, pos - context):pos]), "token": decode([ids[pos]]),
                              "after": decode(ids[pos + 1:pos + 1 + context // 2])})
            per_expert.append(items)
        result.append(per_expert)
    return result


def observe(loaded: LoadedModel, calib: CalibrationSet, batch_size: int = 4,
            progress: Callable[[int, int, int], None] | None = None,
            top_tokens_per_expert: int = TOP_TOKENS_PER_EXPERT,
            shard: tuple[int, int] | None = None) -> ExpertStats:
    """Run the calibration set through the model once, recording routed-expert statistics.

    progress(done_samples, total_samples, tokens_so_far) is called after every batch.
    shard=(i, n): observe only shard i of n of the samples (reap_core.distributed), for a file that
    `merge-stats` combines. In a torch.distributed process group each rank observes its shard and
    the statistics are reduced across ranks: every rank returns those of the whole calibration.
    """
    model, adapter = loaded.model, loaded.adapter
    layer_rows = {idx: row for row, idx in enumerate(loaded.moe_layer_indices)}
    stats_device = loaded.input_device
    acc = _Accumulator(layer_rows, loaded.num_experts, len(calib.categories), stats_device, top_tokens_per_expert)
    pad_id = loaded.tokenizer.pad_token_id
    pad_id = 0 if pad_id is None else pad_id
    backbone = model.model  # stop before the LM head: [B, T, vocab] logits would dominate memory
    rank, world_size = distributed.world()
    reduce_ranks = shard is None and world_size > 1
    if reduce_ranks:
        shard = (rank, world_size)
    lengths = [len(ids) for ids in calib.token_ids]
    samples = distributed.shard_samples(lengths, *shard) if shard else list(range(len(lengths)))
    done, tokens = 0, 0
    total = len(samples)
    with torch.inference_mode(), adapter.observing(model, acc.record):
        for batch in iter_batches(calib, batch_size, pad_id, only=samples):
            acc.begin_batch(batch.attention_mask, batch.category_ids, batch.sample_ids, stats_device)
            backbone(**batch.model_inputs(stats_device), use_cache=False)
            done += len(batch.sample_ids)
            tokens += int(batch.attention_mask.sum())
            if progress:
                progress(done, total, tokens)
    if reduce_ranks:
        acc.top_score, acc.top_token = distributed.all_reduce_accumulator(acc.sums, acc.maxes, acc.top_score,
                                                                          acc.top_token)
        samples = list(range(len(lengths)))
    stats = stats_from_accumulator(loaded, calib, acc, top_tokens_per_expert, samples)
    if shard and not reduce_ranks:
        stats.calibration[distributed.SHARD_KEY] = [shard[0], shard[1]]
    return stats


def stats_from_accumulator(loaded: LoadedModel, calib: CalibrationSet, acc: _Accumulator, top_tokens_per_expert: int,
                           samples: list[int] | None) -> ExpertStats:
    """The ExpertStats of what `acc` recorded over `samples` (None = all) of `calib`."""
    lengths = [len(ids) for ids in calib.token_ids]
    tokens_per_category = [0] * len(calib.categories)
    for i in (range(len(lengths)) if samples is None else samples):
        tokens_per_category[calib.category_ids[i]] += lengths[i]
    calibration = dict(spec=calib.spec, fingerprint=calib.fingerprint(), max_tokens=calib.max_tokens,
                       samples=len(calib.token_ids), tokens=calib.num_tokens, truncated=calib.truncated,
                       summary=calib.summary, top_tokens_per_expert=top_tokens_per_expert)
    adapter = loaded.adapter
    return ExpertStats(
        model_id=loaded.model_id, layer_indices=list(acc.rows), num_experts=loaded.num_experts,
        top_k=loaded.top_k, categories=list(calib.categories), arrays=acc.arrays(),
        tokens_per_category=tokens_per_category, calibration=calibration,
        top_tokens=_snippets(acc, calib, loaded.tokenizer) if top_tokens_per_expert else None,
        expert_groups=(adapter.expert_groups(loaded.config), adapter.groups_chosen(loaded.config)))
