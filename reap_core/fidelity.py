"""Fidelity: how far each prune's next-token distribution moves from the original, on held-out data.

What enters: a loaded model, its calibration statistics, a `HeldOut` (heldout.py), ratios and
criteria. What leaves: a `FidelityResult` — per (criterion, ratio): mean KL(original ‖ pruned),
top-1 agreement and the perplexity ratio — which the app draws (viz.fidelity_figure) and caches.

Everything runs through masked views of ONE loaded model (no reloads, no copies), in the calling
thread (the masks live in the caller's context, see masking.py). One calibration serves every
criterion and ratio. Held-out sequences are the OUTER loop and plans the inner one, several plans
per forward (one batch row per plan, per-row masks): the original's log-probs of a sequence are
computed once, in the same forward as the first plans, so each sweep point costs one pass over
the held-out set and no padding is wasted when many plans share a sequence.

Definitions (shown in the UI and the card):
  KL         mean over scored tokens of sum_v p_orig(v) (log p_orig(v) - log p_pruned(v)), in nats.
  top-1      share of scored tokens where the argmax of both distributions is the same token.
  ppl ratio  exp(mean NLL pruned) / exp(mean NLL original) of the actual next tokens.
Which tokens are scored: see heldout.py (the answers by default; the result says what was scored).

Shapes: N held-out sequences, B batch rows, T tokens, V vocabulary, P scored positions of a batch.
Memory: the original's log-probs of one batch, [P, V] float32 (batch 1 x 256 answer tokens x
262,144 vocab = 268 MB for Gemma 4: use batch_size 1-2 there; the bundled model's V is 1,660).
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InvalidPlan
from .greedy import Progress
from .heldout import HeldOut
from .merging import MergedModel, compressed_rows

if TYPE_CHECKING:
    from .merge_signals import MergeSignals
from .model import LoadedModel
from .plan import PruningPlan, experts_to_prune, make_plan
from .saliency import MERGE_PREFIX, get_criterion
from .stats import ExpertStats

DEFAULT_RATIOS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
DEFAULT_CRITERIA = ("reap", "frequency", "ean_sum", "random")
METRICS = {  # name -> (axis title, what "no damage" is)
    "kl": ("mean KL(original ‖ pruned), nats/token", 0.0),
    "top1": ("top-1 agreement with the original", 1.0),
    "ppl_ratio": ("perplexity ratio (pruned / original)", 1.0),
}


# --- one batch: tensors in, log-probs at the scored positions out -------------------------------

def heldout_batches(heldout: HeldOut, batch_size: int, pad_id: int) -> Iterator[tuple]:
    """(ids [B, T], attention [B, T], keep, targets [P], score [B, keep-1]) per batch, longest first.
    `keep` is how many final positions need logits: from the first scored target's predictor on."""
    order = sorted(range(len(heldout.token_ids)), key=lambda i: -len(heldout.token_ids[i]))
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        lens = torch.tensor([len(heldout.token_ids[i]) for i in idx])
        starts = torch.tensor([heldout.score_from[i] for i in idx])
        T = int(lens.max())
        ids = torch.full((len(idx), T), pad_id, dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, :lens[row]] = torch.tensor(heldout.token_ids[i])
        attn = (torch.arange(T)[None] < lens[:, None]).long()
        first = int(starts.min()) - 1               # first position whose logits are scored
        target_pos = torch.arange(first + 1, T)     # [keep-1] position of each target
        score = (target_pos[None] >= starts[:, None]) & (target_pos[None] < lens[:, None])  # [B, keep-1]
        yield ids, attn, T - first, ids[:, first + 1:][score], score


def _log_probs(loaded: LoadedModel, ids, attn, keep: int, score) -> torch.Tensor:
    """[P, V] float32 log-softmax at the scored positions (logits of only the last `keep` positions)."""
    dev = loaded.input_device
    logits = loaded.model(input_ids=ids.to(dev), attention_mask=attn.to(dev), use_cache=False,
                          logits_to_keep=keep).logits
    return logits[:, :-1][score.to(logits.device)].float().log_softmax(-1)


def compare_log_probs(ref: torch.Tensor, test: torch.Tensor, targets: torch.Tensor) -> dict:
    """Sums over positions for [P, V] log-probs: KL(ref ‖ test), top-1 agreements, NLLs of targets."""
    targets = targets.to(ref.device)
    return dict(kl=float(F.kl_div(test, ref, log_target=True, reduction="sum")),
                agree=int((ref.argmax(-1) == test.argmax(-1)).sum()),
                nll_ref=float(-ref.gather(1, targets[:, None]).sum()),
                nll_test=float(-test.gather(1, targets[:, None]).sum()), tokens=int(targets.numel()))


# --- plans against the original ----------------------------------------------------------------

@dataclass
class _Sums:
    kl: float = 0.0
    agree: int = 0
    nll: float = 0.0
    tokens: int = 0


def _plan_key(plan):
    if plan is None:
        return None
    return ("merged", id(plan)) if isinstance(plan, MergedModel) else plan.kept


@torch.inference_mode()
def measure_fidelity(loaded: LoadedModel, heldout: HeldOut, plans: Sequence[PruningPlan | None],
                     batch_size: int = 8, progress: Progress | None = None) -> tuple[list[dict], dict]:
    """Metrics of each plan (None = the original) against the original on the held-out set.

    Several plans share each forward: its rows are (held-out sequence, plan) pairs under per-row
    masks (masking.masked_rows), at most `batch_size` rows, the original's row first; with many
    plans a forward holds one sequence under `batch_size` plans, so its rows need no padding.
    Plans that keep the same experts are computed once. progress(done, total) counts forwards.

    Returns ([{kl, top1, ppl_ratio, nll} per plan], info)."""
    unique = list(dict.fromkeys(_plan_key(p) for p in plans if p is not None))
    by_key = {_plan_key(p): p for p in plans if p is not None}
    variants: list[PruningPlan | None] = [None] + [by_key[k] for k in unique]   # 0 = the original
    sums = [_Sums() for _ in variants]
    pad = loaded.tokenizer.pad_token_id or 0
    seqs_per_forward = max(1, batch_size // len(variants))
    batches = list(heldout_batches(heldout, seqs_per_forward, pad))
    groups = [math.ceil(len(variants) / max(1, batch_size // len(b[0]))) for b in batches]
    total, done = sum(groups), 0
    t0, c0 = time.perf_counter(), time.process_time()   # wall and process-CPU seconds (CPU: robust to other jobs)
    for (ids, attn, keep, targets, score), n_groups in zip(batches, groups):
        B, P = ids.shape[0], targets.numel()
        per_forward = math.ceil(len(variants) / n_groups)
        ref = None
        for g in range(0, len(variants), per_forward):
            chunk = list(range(g, min(g + per_forward, len(variants))))
            with compressed_rows(loaded, [variants[v] for v in chunk for _ in range(B)]):
                out = _log_probs(loaded, ids.repeat(len(chunk), 1), attn.repeat(len(chunk), 1), keep,
                                 score.repeat(len(chunk), 1))                   # [len(chunk) * P, V]
            for v, test in zip(chunk, out.split(P)):
                ref = test if v == 0 else ref
                c = compare_log_probs(ref, test, targets)
                s = sums[v]
                s.kl, s.agree, s.nll, s.tokens = s.kl + c["kl"], s.agree + c["agree"], s.nll + c["nll_test"], s.tokens + c["tokens"]
            done += 1
            if progress:
                progress(done, total)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    n = max(sums[0].tokens, 1)
    ref_nll = sums[0].nll
    original = dict(kl=0.0, top1=1.0, ppl_ratio=1.0, nll=ref_nll / n)
    results = []
    for p in plans:
        if p is None:
            results.append(dict(original))
            continue
        s = sums[1 + unique.index(_plan_key(p))]
        results.append(dict(kl=s.kl / n, top1=s.agree / n, ppl_ratio=math.exp((s.nll - ref_nll) / n), nll=s.nll / n))
    info = dict(scored_tokens=sums[0].tokens, original_nll=ref_nll / n, original_ppl=math.exp(ref_nll / n),
                forwards=total, sequence_passes=len(heldout.token_ids) * len(variants), unique_plans=len(unique),
                seconds_measuring=seconds, cpu_seconds_measuring=cpu_seconds)
    return results, info


# --- the sweep and its result ------------------------------------------------------------------

@dataclass
class FidelityPoint:
    criterion: str
    ratio: float
    experts_kept: int
    kl: float
    top1: float
    ppl_ratio: float


@dataclass
class FidelityResult:
    model_id: str
    stats_key: str
    heldout: dict                # HeldOut.describe(): source, sequences, scored tokens, what was scored
    ratios: list[float]
    criteria: list[str]
    points: list[FidelityPoint]
    num_experts: int
    top_k: int
    original_ppl: float
    seed: int = 0
    timing: dict = field(default_factory=dict)

    def point(self, criterion: str, ratio: float) -> FidelityPoint:
        for p in self.points:
            if p.criterion == criterion and abs(p.ratio - ratio) < 1e-9:
                return p
        raise KeyError((criterion, ratio))

    def series(self, criterion: str, metric: str) -> list[float]:
        return [getattr(self.point(criterion, r), metric) for r in self.ratios]

    def experts_kept(self, ratio: float) -> int:
        return self.point(self.criteria[0], ratio).experts_kept

    def to_dict(self) -> dict:
        d = asdict(self)
        d["points"] = [asdict(p) for p in self.points]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "FidelityResult":
        d = dict(d)
        d["points"] = [FidelityPoint(**p) for p in d["points"]]
        return cls(**d)

    @staticmethod
    def metric_axis(metric: str) -> tuple[str, float]:
        """(axis title, the value that means no damage) of a metric; an unknown name lists the valid ones."""
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
        return METRICS[metric]

    def scored_label(self) -> str:
        """What was scored, in a few words (for a figure title): answer tokens, all tokens, or both."""
        positions = self.heldout.get("positions")
        if positions == "mixed":
            return f"answers; {self.heldout.get('all_tokens_sequences')} sequences on all tokens"
        return {"answer": "answer tokens", "all": "all tokens"}.get(positions, str(positions))

    def scored_line(self) -> str:
        """One line: how many tokens of which held-out data were scored, and any fallback."""
        h = self.heldout
        line = (f"Scored: {h.get('scored_tokens')} tokens ({self.scored_label()}) of {h.get('sequences')} held-out "
                f"sequences from '{h.get('source')}'.")
        return line + (f" {h['positions_note']}." if h.get("positions_note") else "")

    def format_table(self, metric: str = "kl") -> str:
        """Markdown: one row per ratio, one column per criterion, then what was scored."""
        labels = [get_criterion(c).label for c in self.criteria]
        lines = ["| Ratio | Kept | " + " | ".join(labels) + " |", "|---:|---:|" + "---:|" * len(labels)]
        for r in self.ratios:
            vals = " | ".join(f"{v:.4f}" for v in (getattr(self.point(c, r), metric) for c in self.criteria))
            lines.append(f"| {r:.0%} | {self.experts_kept(r)} | {vals} |")
        return f"{self.metric_axis(metric)[0]}\n\n" + "\n".join(lines) + "\n\n" + self.scored_line()


def stats_key(stats: ExpertStats) -> str:
    """Identifies the statistics themselves (the calibration fingerprint alone can be empty)."""
    h = hashlib.sha256(stats.fingerprint().encode())
    for name in sorted(stats.arrays):
        h.update(np.ascontiguousarray(stats.arrays[name]).tobytes())
    return h.hexdigest()[:16]


def feasible_ratios(num_experts: int, top_k: int, ratios: Sequence[float] = DEFAULT_RATIOS) -> list[float]:
    """The ratios that keep at least top_k experts (the default grid for a small model)."""
    return [r for r in ratios if r == 0 or num_experts - experts_to_prune(num_experts, r) >= top_k]


def run_fidelity_sweep(loaded: LoadedModel, stats: ExpertStats, heldout: HeldOut,
                       ratios: Sequence[float] = DEFAULT_RATIOS, criteria: Sequence[str] = DEFAULT_CRITERIA,
                       seed: int = 0, batch_size: int = 8, progress: Progress | None = None,
                       merges: Sequence[str] = (), signals: "MergeSignals | None" = None) -> FidelityResult:
    """Every criterion x ratio from ONE calibration, by masked views; ratio 0 is the original.
    `merges`: merge methods (merge_plan) swept beside the criteria, as "merge:<method>" curves; they need
    the calibration's `signals` and build each merged model in memory (merging.build_merged)."""
    stats.check_matches(loaded.moe_layer_indices, loaded.num_experts, loaded.top_k)
    ratios = sorted({round(float(r), 9) for r in ratios})
    if not ratios:
        raise InvalidPlan("give at least one compression ratio to sweep")
    for c in criteria:
        get_criterion(c)
    usable = feasible_ratios(loaded.num_experts, loaded.top_k, [r for r in ratios if 0 <= r < 1])
    bad = [r for r in ratios if r not in usable]
    if bad:
        raise InvalidPlan(f"ratios {', '.join(f'{r:g}' for r in bad)} are outside [0, 1) or keep fewer than the "
                          f"{loaded.top_k} experts the router picks; usable up to "
                          f"{(loaded.num_experts - loaded.top_k) / loaded.num_experts:.3f}")
    grid = [(c, r, None if r == 0 else make_plan(stats, r, c, seed=seed)) for c in criteria for r in ratios]
    if merges:
        from .merge_plan import plan_merge
        from .merging import build_merged
        if signals is None:
            raise InvalidPlan("merge methods need the calibration's merge signals (merge_signals.collect_merge_signals)")
        grid += [(MERGE_PREFIX + m, r, None if r == 0 else build_merged(loaded, plan_merge(stats, signals, m, r)))
                 for m in merges for r in ratios]
        criteria = list(criteria) + [MERGE_PREFIX + m for m in merges]
    t0 = time.perf_counter()
    metrics, info = measure_fidelity(loaded, heldout, [p for _, _, p in grid], batch_size, progress)
    info["seconds"] = time.perf_counter() - t0
    points = [FidelityPoint(c, r, p.num_kept if p else loaded.num_experts, m["kl"], m["top1"], m["ppl_ratio"])
              for (c, r, p), m in zip(grid, metrics)]
    return FidelityResult(model_id=loaded.model_id, stats_key=stats_key(stats), heldout=heldout.describe(),
                          ratios=ratios, criteria=list(criteria), points=points, num_experts=loaded.num_experts,
                          top_k=loaded.top_k, original_ppl=info["original_ppl"], seed=seed, timing=info)


class FidelityCache:
    """In-memory results per (model, statistics, held-out set, ratios, criteria, seed): the sweep
    is the expensive part of the Evaluate step, and moving the ratio slider only redraws."""

    def __init__(self, max_entries: int = 16):
        self.max_entries = max_entries
        self._results: dict[tuple, FidelityResult] = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(loaded: LoadedModel, stats: ExpertStats, heldout: HeldOut, ratios: Sequence[float],
            criteria: Sequence[str], seed: int = 0, merges: Sequence[str] = ()) -> tuple:
        return (loaded.model_id, stats_key(stats), heldout.fingerprint(),
                tuple(sorted({round(float(r), 9) for r in ratios})), tuple(criteria), seed, tuple(merges))

    def get_or_run(self, loaded: LoadedModel, stats: ExpertStats, heldout: HeldOut,
                   ratios: Sequence[float] = DEFAULT_RATIOS, criteria: Sequence[str] = DEFAULT_CRITERIA,
                   seed: int = 0, batch_size: int = 8, progress: Progress | None = None,
                   merges: Sequence[str] = (), signals: "MergeSignals | None" = None) -> tuple[FidelityResult, bool]:
        """(result, came_from_cache)."""
        key = self.key(loaded, stats, heldout, ratios, criteria, seed, merges)
        with self._lock:
            if key in self._results:
                return self._results[key], True
        result = run_fidelity_sweep(loaded, stats, heldout, ratios, criteria, seed, batch_size, progress, merges, signals)
        with self._lock:
            while len(self._results) >= self.max_entries:
                self._results.pop(next(iter(self._results)))
            self._results[key] = result
        return result, False
