"""Stage 7 — evaluate: what pruning costs, measured against the original on the SAME weights.

Three measurements, all through masked views of one loaded model (no reloads, no copies), run in
the calling thread (the mask lives in the caller's context, see masking.py):

1. Fidelity sweep — held-out conversations in, per (criterion, ratio): mean KL(original ‖ pruned)
   of the next-token distribution, top-1 agreement, and the perplexity ratio, out. One
   calibration (the ExpertStats) serves every criterion and ratio. Batches are the OUTER loop and
   plans the inner one: the original's log-probs of a batch are computed once and kept while
   every plan runs on that batch, so each sweep point costs one forward over the held-out set.
2. Generation quality — greedy answers of both variants to prompts across domains (including
   long-answer and repetition-stress prompts): average words, loop rate, collapse rate per domain.
3. Task accuracy — the bundled model's toy suite (task_eval.run_suite) or, for real chat models,
   the built-in gemma4-bench (gemma_bench.py), original vs pruned, with the sample counts.

Definitions (shown in the UI and the card):
  scored tokens  by default only the tokens of the LAST assistant turn of each held-out
                 conversation (its answer, including the end-of-turn marker): the prompt and the
                 chat-template scaffolding are predictable and would dilute the difference.
                 positions="all" scores every non-padding token after the first; raw-text samples
                 are always scored that way. Padding is never scored.
  KL             mean over scored tokens of sum_v p_orig(v) (log p_orig(v) - log p_pruned(v)), in nats.
  top-1          share of scored tokens where the argmax of both distributions is the same token.
  ppl ratio      exp(mean NLL pruned) / exp(mean NLL original) of the actual next tokens.
  loop           the answer contains a span of >= LOOP_MIN_TOKENS tokens (words and punctuation
                 runs) made of one unit of 1..LOOP_MAX_PERIOD tokens, containing a word, repeated
                 back to back >= LOOP_MIN_REPEATS times ("a cat, a cat, a cat, ...").
  collapse       the answer (after the reasoning channel) is empty, has no letter or digit, or
                 has >= 10 words of which one single word is at least half.

Shapes: N held-out sequences, T tokens, V vocabulary, P scored positions of a batch.
Memory: the original's log-probs of one batch, [P, V] float32 (batch 1 x 256 answer tokens x
262,144 vocab = 268 MB for Gemma 4: use batch_size 1-2 there; the bundled model's V is 1,660).
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import gemma_bench, toy_tasks
from .calibration import CalibrationSet, Sample, load_samples, render_sample
from .chat import split_reasoning
from .errors import CalibrationError, InvalidPlan
from .masking import masked_view
from .model import BUNDLED_MODEL, BUNDLED_MODEL_DIR, LoadedModel, resolve_model_path
from .plan import PruningPlan, experts_to_prune, make_plan
from .saliency import get_criterion
from .stats import ExpertStats

Progress = Callable[[int, int], None]

HELDOUT_SEED = 4321            # toy items: differs from TRAIN (1234), CALIBRATION (5678), EVAL (9999)
DEFAULT_RATIOS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
DEFAULT_CRITERIA = ("reap", "frequency", "ean_sum", "random")
METRICS = {  # name -> (axis title, what "no damage" is)
    "kl": ("mean KL(original ‖ pruned), nats/token", 0.0),
    "top1": ("top-1 agreement with the original", 1.0),
    "ppl_ratio": ("perplexity ratio (pruned / original)", 1.0),
}


def is_bundled(loaded: LoadedModel) -> bool:
    try:
        return loaded.model_id in (BUNDLED_MODEL, "bundled") or \
            Path(resolve_model_path(loaded.model_id)).resolve() == BUNDLED_MODEL_DIR.resolve()
    except Exception:
        return False


def defaults_for(loaded: LoadedModel) -> dict:
    """Held-out source, prompt set, task suite and token budget that fit this model."""
    if is_bundled(loaded):
        return dict(heldout="toy", prompts="toy", suite="toy", max_new_tokens=96, batch_size=8)
    return dict(heldout=gemma_bench.NAME, prompts="general", suite=gemma_bench.NAME, max_new_tokens=256,
                batch_size=2)


# ================================================================================================
# Held-out data: never the calibration samples
# ================================================================================================

def _ids_hash(ids: Sequence[int]) -> str:
    return hashlib.sha1(np.asarray(ids, dtype=np.int64).tobytes()).hexdigest()


@dataclass(frozen=True)
class Exclusion:
    """Token-id fingerprints of calibration samples (truncated as calibration truncated them)."""

    hashes: frozenset[str] = frozenset()
    max_tokens: int = 0
    note: str = ""

    def excludes(self, ids: Sequence[int]) -> bool:
        return bool(self.hashes) and _ids_hash(ids[:self.max_tokens] if self.max_tokens else ids) in self.hashes


def calibration_exclusion(source: CalibrationSet | ExpertStats | None, tokenizer: Any,
                          allow_local_files: bool = True) -> Exclusion:
    """What to keep out of the held-out set. From a CalibrationSet: its exact samples. From
    ExpertStats (e.g. loaded from a file): every sample its calibration spec can give (a superset
    of what was used, since the per-category cap is not recorded); Hub specs are not re-downloaded.
    `allow_local_files=False` (public mode): a spec naming a server file is never read — it comes
    from a statistics file a visitor may have written — only built-in specs are re-read."""
    if source is None:
        return Exclusion(note="no calibration given: nothing excluded")
    if isinstance(source, CalibrationSet):
        return Exclusion(frozenset(_ids_hash(ids) for ids in source.token_ids), source.max_tokens,
                         f"{len(source.token_ids)} calibration samples excluded by token fingerprint")
    spec = str(source.calibration.get("spec", ""))
    max_tokens = int(source.calibration.get("max_tokens") or 0)
    builtin = spec == "builtin" or spec.startswith("builtin:")
    local = builtin or (allow_local_files and spec and Path(spec).expanduser().exists())
    if not local:
        return Exclusion(note=f"calibration '{spec}' is not local: its samples could not be excluded")
    try:
        samples = load_samples(spec)
    except CalibrationError as exc:
        return Exclusion(note=f"calibration '{spec}' could not be re-read ({exc}): nothing excluded")
    hashes = []
    for s in samples:
        ids = render_sample(s, tokenizer)
        hashes.append(_ids_hash(ids[:max_tokens] if max_tokens else ids))
    return Exclusion(frozenset(hashes), max_tokens, f"samples of calibration '{spec}' excluded by token fingerprint")


@dataclass
class HeldOut:
    """Tokenized held-out sequences; targets from index score_from[i] on are scored."""

    source: str
    token_ids: list[list[int]]
    score_from: list[int]
    categories: list[str]
    positions: str = "answer"
    excluded: int = 0
    note: str = ""

    @property
    def num_scored(self) -> int:
        return sum(len(ids) - s for ids, s in zip(self.token_ids, self.score_from))

    def fingerprint(self) -> str:
        h = hashlib.sha256(self.positions.encode())
        for ids, s in zip(self.token_ids, self.score_from):
            h.update(np.asarray([s, *ids], dtype=np.int64).tobytes())
        return h.hexdigest()[:16]

    def describe(self) -> dict:
        return dict(source=self.source, fingerprint=self.fingerprint(), sequences=len(self.token_ids),
                    scored_tokens=self.num_scored, positions=self.positions, excluded=self.excluded, note=self.note)


def _answer_start(sample: Sample, ids: list[int], tokenizer: Any) -> int:
    """Index of the first token of the last assistant turn (1 when there is none to find)."""
    msgs = list(sample.messages or ())
    last = max((i for i, m in enumerate(msgs) if m.get("role") == "assistant"), default=None)
    if last is None or not getattr(tokenizer, "chat_template", None):
        return 1
    try:
        text = tokenizer.apply_chat_template(msgs[:last], tools=list(sample.tools) if sample.tools else None,
                                             add_generation_prompt=True, tokenize=False)
        prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
    except Exception:
        return 1
    n = 0
    for a, b in zip(prompt, ids):  # common prefix: robust to a merge at the boundary
        if a != b:
            break
        n += 1
    return max(1, n)


def _toy_samples(per_domain: int, exclusion: Exclusion, tokenizer: Any) -> tuple[list[Sample], int]:
    samples, dropped = [], 0
    for domain in toy_tasks.DOMAINS:
        got = 0
        for item in toy_tasks.generate(domain, per_domain * 4, HELDOUT_SEED):
            s = Sample(domain, messages=tuple(toy_tasks.to_messages(item, with_answer=True)))
            if exclusion.excludes(render_sample(s, tokenizer)):
                dropped += 1
                continue
            samples.append(s)
            got += 1
            if got == per_domain:
                break
    return samples, dropped


def build_heldout(spec: str, tokenizer: Any, exclusion: Exclusion = Exclusion(), max_tokens: int = 256,
                  per_category: int | None = None, positions: str = "answer") -> HeldOut:
    """Held-out sequences from a spec:
      toy[:N]          N (default 8) bundled-model task conversations per domain, seed HELDOUT_SEED
      gemma4-bench     the built-in benchmark items with their worked solutions
      anything else    a calibration spec (builtin:cat, file.jsonl, Hub dataset) used as held-out text
    Samples equal to a calibration sample (see `calibration_exclusion`) are dropped."""
    if positions not in ("answer", "all"):
        raise CalibrationError(f"positions must be 'answer' or 'all', not {positions!r}")
    spec = (spec or "").strip()
    dropped = 0
    if spec == "toy" or spec.startswith("toy:"):
        n = int(spec.partition(":")[2] or per_category or 8)
        samples, dropped = _toy_samples(n, exclusion, tokenizer)
    elif spec == gemma_bench.NAME:
        samples = [Sample(it.domain, messages=tuple(gemma_bench.to_messages(it, with_answer=True)))
                   for it in gemma_bench.items()]
    else:
        samples = load_samples(spec, per_category)
    token_ids, score_from, cats = [], [], []
    for s in samples:
        ids = render_sample(s, tokenizer)
        if exclusion.excludes(ids):
            dropped += 1
            continue
        start = _answer_start(s, ids, tokenizer) if positions == "answer" else 1
        ids = ids[:max_tokens]
        if start >= len(ids):   # truncation cut the whole answer: nothing to score
            continue
        token_ids.append(ids)
        score_from.append(start)
        cats.append(s.category)
    if not token_ids:
        raise CalibrationError(f"held-out source '{spec}' gave no sequences to score"
                               + (f" ({dropped} were calibration samples)" if dropped else ""))
    return HeldOut(spec, token_ids, score_from, cats, positions, dropped, exclusion.note)


# ================================================================================================
# Fidelity: next-token distributions of plans vs the original
# ================================================================================================

@dataclass
class _Sums:
    kl: float = 0.0
    agree: int = 0
    nll: float = 0.0
    tokens: int = 0


def _batches(heldout: HeldOut, batch_size: int, pad_id: int):
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


def _plan_key(plan: PruningPlan | None):
    return None if plan is None else plan.kept


@torch.inference_mode()
def measure_fidelity(loaded: LoadedModel, heldout: HeldOut, plans: Sequence[PruningPlan | None],
                     batch_size: int = 8, progress: Progress | None = None) -> tuple[list[dict], dict]:
    """Metrics of each plan (None = the original) against the original on the held-out set.

    Returns ([{kl, top1, ppl_ratio, nll} per plan], info). Plans that keep the same experts are
    computed once. progress(done, total) counts forward passes.
    """
    unique = list(dict.fromkeys(_plan_key(p) for p in plans if p is not None))
    by_key = {_plan_key(p): p for p in plans if p is not None}
    sums = {k: _Sums() for k in unique}
    ref_nll, ref_tokens = 0.0, 0
    pad = loaded.tokenizer.pad_token_id or 0
    n_batches = math.ceil(len(heldout.token_ids) / batch_size)
    total, done = n_batches * (1 + len(unique)), 0
    t_ref = t_plans = c_ref = c_plans = 0.0   # wall and process-CPU seconds (CPU: robust to other jobs)
    for ids, attn, keep, targets, score in _batches(heldout, batch_size, pad):
        t0, c0 = time.perf_counter(), time.process_time()
        with masked_view(loaded, None):
            ref = _log_probs(loaded, ids, attn, keep, score)
        t_ref, c_ref = t_ref + time.perf_counter() - t0, c_ref + time.process_time() - c0
        ref_nll += float(-ref.gather(1, targets[:, None].to(ref.device)).sum())
        ref_tokens += targets.numel()
        done += 1
        if progress:
            progress(done, total)
        t0, c0 = time.perf_counter(), time.process_time()
        for key in unique:
            with masked_view(loaded, by_key[key]):
                test = _log_probs(loaded, ids, attn, keep, score)
            c = compare_log_probs(ref, test, targets)
            s = sums[key]
            s.kl, s.agree, s.nll, s.tokens = s.kl + c["kl"], s.agree + c["agree"], s.nll + c["nll_test"], s.tokens + c["tokens"]
            done += 1
            if progress:
                progress(done, total)
        t_plans, c_plans = t_plans + time.perf_counter() - t0, c_plans + time.process_time() - c0
    n = max(ref_tokens, 1)
    original = dict(kl=0.0, top1=1.0, ppl_ratio=1.0, nll=ref_nll / n)
    results = []
    for p in plans:
        if p is None:
            results.append(dict(original))
            continue
        s = sums[_plan_key(p)]
        results.append(dict(kl=s.kl / n, top1=s.agree / n, ppl_ratio=math.exp((s.nll - ref_nll) / n), nll=s.nll / n))
    info = dict(scored_tokens=ref_tokens, original_nll=ref_nll / n, original_ppl=math.exp(ref_nll / n),
                batches=n_batches, plan_forwards=n_batches * len(unique), reference_forwards=n_batches,
                reference_seconds=t_ref, plan_seconds=t_plans, reference_cpu_seconds=c_ref, plan_cpu_seconds=c_plans,
                unique_plans=len(unique))
    return results, info


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
    heldout: dict
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

    def format_table(self, metric: str = "kl") -> str:
        """Markdown: one row per ratio, one column per criterion."""
        labels = [get_criterion(c).label for c in self.criteria]
        lines = ["| Ratio | Kept | " + " | ".join(labels) + " |", "|---:|---:|" + "---:|" * len(labels)]
        for r in self.ratios:
            vals = " | ".join(f"{v:.4f}" for v in (getattr(self.point(c, r), metric) for c in self.criteria))
            lines.append(f"| {r:.0%} | {self.experts_kept(r)} | {vals} |")
        return f"{METRICS[metric][0]}\n\n" + "\n".join(lines)


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
                       seed: int = 0, batch_size: int = 8, progress: Progress | None = None) -> FidelityResult:
    """Every criterion x ratio from ONE calibration, by masked views; ratio 0 is the original."""
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
            criteria: Sequence[str], seed: int = 0) -> tuple:
        return (loaded.model_id, stats_key(stats), heldout.fingerprint(),
                tuple(sorted({round(float(r), 9) for r in ratios})), tuple(criteria), seed)

    def get_or_run(self, loaded: LoadedModel, stats: ExpertStats, heldout: HeldOut,
                   ratios: Sequence[float] = DEFAULT_RATIOS, criteria: Sequence[str] = DEFAULT_CRITERIA,
                   seed: int = 0, batch_size: int = 8, progress: Progress | None = None) -> tuple[FidelityResult, bool]:
        """(result, came_from_cache)."""
        key = self.key(loaded, stats, heldout, ratios, criteria, seed)
        with self._lock:
            if key in self._results:
                return self._results[key], True
        result = run_fidelity_sweep(loaded, stats, heldout, ratios, criteria, seed, batch_size, progress)
        with self._lock:
            while len(self._results) >= self.max_entries:
                self._results.pop(next(iter(self._results)))
            self._results[key] = result
        return result, False


def fidelity_figure(result: FidelityResult, metric: str = "kl", current_ratio: float | None = None):
    """Ratio on x, the metric on y, one line per criterion; the current ratio as a vertical line."""
    import plotly.graph_objects as go

    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    title, baseline = METRICS[metric]
    fig = go.Figure()
    kept = [result.experts_kept(r) for r in result.ratios]
    for c in result.criteria:
        fig.add_trace(go.Scatter(
            x=result.ratios, y=result.series(c, metric), mode="lines+markers", name=get_criterion(c).label,
            customdata=kept, hovertemplate=(f"{get_criterion(c).label}<br>ratio %{{x:.0%}} · %{{customdata}} of "
                                            f"{result.num_experts} kept<br>{metric}: %{{y:.4g}}<extra></extra>")))
    fig.add_hline(y=baseline, line_dash="dot", line_color="gray")
    if current_ratio is not None:
        n_kept = result.num_experts - experts_to_prune(result.num_experts, current_ratio)
        fig.add_vline(x=current_ratio, line_dash="dash", line_color="firebrick",
                      annotation_text=f"current {current_ratio:.0%} ({n_kept} kept)", annotation_position="top")
    h = result.heldout
    fig.update_layout(
        title=f"Fidelity vs compression — {h.get('sequences')} held-out sequences, {h.get('scored_tokens')} "
              f"scored tokens ({h.get('positions')})",
        xaxis=dict(title="compression ratio (fraction of experts pruned per layer)", tickformat=".0%"),
        yaxis_title=title, height=380, margin=dict(l=60, r=20, t=60, b=50),
        legend=dict(orientation="h", y=1.02, x=1, xanchor="right", yanchor="bottom"))
    if metric == "top1":
        fig.update_yaxes(range=[0, 1.02])
    return fig


# ================================================================================================
# Generation quality: loops and collapse, original vs pruned
# ================================================================================================

LOOP_MIN_TOKENS = 20
LOOP_MIN_REPEATS = 3
LOOP_MAX_PERIOD = 25
_TOKEN = re.compile(r"\w+|[^\w\s]+")
_WORD = re.compile(r"\w+")


def find_loop(text: str) -> tuple[int, int] | None:
    """(period, repeats) of the longest back-to-back repeated unit that makes a loop, or None."""
    toks = _TOKEN.findall(text.lower())
    best = None
    for p in range(1, min(LOOP_MAX_PERIOD, len(toks) // LOOP_MIN_REPEATS) + 1):
        run = 0
        for i in range(len(toks) - p + 1):
            if i + p < len(toks) and toks[i] == toks[i + p]:
                run += 1
                continue
            span, start = run + p, i - run
            if run and span >= LOOP_MIN_TOKENS and span // p >= LOOP_MIN_REPEATS \
                    and any(_WORD.fullmatch(t) for t in toks[start:start + p]):
                if best is None or span > best[0]:
                    best = (span, p, span // p)
            run = 0
    return None if best is None else (best[1], best[2])


def is_loop(text: str) -> bool:
    return find_loop(text) is not None


def is_collapse(text: str) -> bool:
    if not re.search(r"[^\W_]", text):          # empty, whitespace, or punctuation only
        return True
    words = _WORD.findall(text.lower())
    return len(words) >= 10 and Counter(words).most_common(1)[0][1] * 2 >= len(words)


@torch.inference_mode()
def generate_raw(loaded: LoadedModel, conversations: list[list[dict]], max_new_tokens: int, batch_size: int = 8,
                 thinking: bool = False, progress: Progress | None = None) -> list[tuple[str, bool]]:
    """Greedy, batched, in the calling thread (so the caller's masked view applies).
    Returns (raw decoded text with special tokens kept, hit the token limit) per conversation."""
    tok = loaded.tokenizer
    prompts = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False, enable_thinking=thinking)
               for c in conversations]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    eos = loaded.model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
    pad = tok.pad_token_id if tok.pad_token_id is not None else min(eos_ids)
    pad_text = tok.decode([pad], skip_special_tokens=False) if tok.pad_token_id is not None else None
    out: list[tuple[str, bool]] = [("", False)] * len(prompts)
    old_side, tok.padding_side = tok.padding_side, "left"
    try:
        for b in range(0, len(order), batch_size):
            idx = order[b:b + batch_size]
            enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True,
                      add_special_tokens=False).to(loaded.input_device)
            gen = loaded.model.generate(**enc, do_sample=False, temperature=None, top_p=None, top_k=None,
                                        max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=list(eos_ids))
            for i, row in zip(idx, gen[:, enc["input_ids"].shape[1]:].tolist()):
                stopped = any(t in eos_ids for t in row)
                text = tok.decode(row, skip_special_tokens=False)
                if pad_text:
                    text = text.replace(pad_text, "")
                out[i] = (text, not stopped and len(row) >= max_new_tokens)
            if progress:
                progress(min(b + batch_size, len(order)), len(order))
    finally:
        tok.padding_side = old_side
    return out


def prompt_set(name: str, per_domain: int = 4) -> list[tuple[str, str]]:
    """(domain, prompt) pairs. 'toy': held-out toy tasks per domain plus the long-answer and
    repetition-stress prompts (out of the toy's training distribution: where damage shows as loops);
    'general': gemma_bench.GENERATION_PROMPTS."""
    stress = [(d, p) for d, p in gemma_bench.GENERATION_PROMPTS if d in ("long-answer", "repetition-stress")]
    if name == "toy":
        tasks = [(d, it.prompt) for d in toy_tasks.DOMAINS for it in toy_tasks.generate(d, per_domain, HELDOUT_SEED)]
        return tasks + stress
    if name == "general":
        return list(gemma_bench.GENERATION_PROMPTS)
    raise ValueError(f"unknown prompt set {name!r}; choose 'toy' or 'general'")


@dataclass
class DomainQuality:
    n: int
    avg_words: float
    loop_rate: float
    collapse_rate: float
    limit_rate: float        # stopped by max_new_tokens, not by an end-of-turn token


def _quality(answers: list[tuple[str, bool]]) -> DomainQuality:
    texts = [split_reasoning(raw)[1] for raw, _ in answers]
    n = len(texts)
    return DomainQuality(n=n, avg_words=sum(len(t.split()) for t in texts) / max(n, 1),
                         loop_rate=sum(map(is_loop, texts)) / max(n, 1),
                         collapse_rate=sum(map(is_collapse, texts)) / max(n, 1),
                         limit_rate=sum(hit for _, hit in answers) / max(n, 1))


@dataclass
class GenerationReport:
    plan: dict                                   # criterion, ratio, experts kept
    per_domain: dict[str, dict[str, DomainQuality]]   # domain -> {"original", "pruned"}
    settings: dict
    samples: list[dict] = field(default_factory=list)  # domain, prompt, original, pruned (answers)

    def overall(self, variant: str) -> DomainQuality:
        qs = [v[variant] for v in self.per_domain.values()]
        n = sum(q.n for q in qs)
        w = lambda a: sum(getattr(q, a) * q.n for q in qs) / max(n, 1)  # noqa: E731
        return DomainQuality(n, w("avg_words"), w("loop_rate"), w("collapse_rate"), w("limit_rate"))

    def format_table(self) -> str:
        head = ("| Domain | N | Orig AvgWords | Pruned AvgWords | Orig Loop | Pruned Loop | Orig Collapse "
                "| Pruned Collapse |\n|---|---:|---:|---:|---:|---:|---:|---:|")
        rows = [*self.per_domain.items(), ("**all**", {"original": self.overall("original"),
                                                        "pruned": self.overall("pruned")})]
        lines = [f"| {d} | {v['original'].n} | {v['original'].avg_words:.1f} | {v['pruned'].avg_words:.1f} | "
                 f"{v['original'].loop_rate:.0%} | {v['pruned'].loop_rate:.0%} | {v['original'].collapse_rate:.0%} | "
                 f"{v['pruned'].collapse_rate:.0%} |" for d, v in rows]
        return head + "\n" + "\n".join(lines)

    def to_dict(self) -> dict:
        return dict(plan=self.plan, settings=self.settings, samples=self.samples,
                    per_domain={d: {k: asdict(q) for k, q in v.items()} for d, v in self.per_domain.items()})

    @classmethod
    def from_dict(cls, d: dict) -> "GenerationReport":
        return cls(plan=d["plan"], settings=d["settings"], samples=d.get("samples", []),
                   per_domain={k: {v: DomainQuality(**q) for v, q in var.items()} for k, var in d["per_domain"].items()})


GENERATION_DEFINITIONS = (
    f"AvgWords: mean whitespace-separated words of the answer (reasoning channel removed). "
    f"Loop: the answer repeats one unit of 1-{LOOP_MAX_PERIOD} tokens back to back at least {LOOP_MIN_REPEATS} "
    f"times over at least {LOOP_MIN_TOKENS} tokens (tokens = words and punctuation runs; the unit holds a word). "
    f"Collapse: empty answer, no letter or digit, or >= 10 words of which one word is at least half. "
    f"Greedy decoding, same prompts for both.")


def generation_quality(loaded: LoadedModel, plan: PruningPlan, prompts: str | list[tuple[str, str]] = "auto",
                       max_new_tokens: int | None = None, batch_size: int | None = None, thinking: bool = False,
                       per_domain: int = 4, progress: Progress | None = None) -> GenerationReport:
    """Greedy answers of the original and of `plan` to the same prompts, summarised per domain."""
    d = defaults_for(loaded)
    if isinstance(prompts, str):
        prompts = prompt_set(d["prompts"] if prompts == "auto" else prompts, per_domain)
    max_new_tokens = max_new_tokens or d["max_new_tokens"]
    batch_size = batch_size or d["batch_size"]
    convs = [[{"role": "user", "content": p}] for _, p in prompts]
    total = 2 * len(convs)
    answers = {}
    for v, (variant, p) in enumerate((("original", None), ("pruned", plan))):
        step = (lambda done, _t, v=v: progress(v * len(convs) + done, total)) if progress else None
        with masked_view(loaded, p):
            answers[variant] = generate_raw(loaded, convs, max_new_tokens, batch_size, thinking, step)
    domains = list(dict.fromkeys(dom for dom, _ in prompts))
    per = {dom: {v: _quality([a for (dd, _), a in zip(prompts, answers[v]) if dd == dom])
                 for v in ("original", "pruned")} for dom in domains}
    samples = [dict(domain=dom, prompt=p, original=split_reasoning(o[0])[1], pruned=split_reasoning(q[0])[1])
               for (dom, p), o, q in zip(prompts, answers["original"], answers["pruned"])]
    return GenerationReport(plan=dict(criterion=plan.criterion, ratio=plan.compression_ratio,
                                      experts_kept=plan.num_kept, num_experts=plan.num_experts),
                            per_domain=per, samples=samples,
                            settings=dict(max_new_tokens=max_new_tokens, greedy=True, thinking=thinking,
                                          prompts=len(prompts), definitions=GENERATION_DEFINITIONS))


# ================================================================================================
# Task accuracy: toy suite (task_eval) or gemma4-bench, original vs pruned
# ================================================================================================

@dataclass
class TaskReport:
    suite: str
    per_domain: dict[str, dict[str, list[int]]]   # domain -> {"original": [correct, total], "pruned": [...]}
    plan: dict
    settings: dict
    unfinished: dict[str, int] = field(default_factory=dict)   # variant -> reasoning never closed

    def accuracy(self, variant: str, domain: str | None = None) -> float:
        rows = [self.per_domain[domain]] if domain else list(self.per_domain.values())
        c, t = sum(r[variant][0] for r in rows), sum(r[variant][1] for r in rows)
        return c / t if t else 0.0

    @property
    def samples(self) -> int:
        return sum(r["original"][1] for r in self.per_domain.values())

    def format_table(self) -> str:
        lines = ["| Domain | N | Original | Pruned |", "|---|---:|---:|---:|"]
        for d, r in self.per_domain.items():
            (oc, ot), (pc, pt) = r["original"], r["pruned"]
            lines.append(f"| {d} | {ot} | {oc}/{ot} ({oc / max(ot, 1):.0%}) | {pc}/{pt} ({pc / max(pt, 1):.0%}) |")
        lines.append(f"| **all** | {self.samples} | {self.accuracy('original'):.1%} | {self.accuracy('pruned'):.1%} |")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TaskReport":
        return cls(**d)


def task_accuracy(loaded: LoadedModel, plan: PruningPlan, suite: str = "auto", items_per_domain: int | None = None,
                  thinking: bool = False, max_new_tokens: int | None = None, batch_size: int | None = None,
                  progress: Progress | None = None) -> TaskReport:
    """Accuracy per domain, original vs pruned, on the same items (greedy)."""
    from .task_eval import run_suite

    d = defaults_for(loaded)
    suite = d["suite"] if suite == "auto" else suite
    batch_size = batch_size or d["batch_size"]
    per: dict[str, dict[str, list[int]]] = {}
    unfinished: dict[str, int] = {}
    variants = (("original", None), ("pruned", plan))
    if suite == gemma_bench.NAME:
        chosen = [it for dom in gemma_bench.DOMAINS for it in gemma_bench.items(dom, items_per_domain)]
        budget = max_new_tokens or (4 * gemma_bench.MAX_NEW_TOKENS if thinking else gemma_bench.MAX_NEW_TOKENS)
        convs = [gemma_bench.to_messages(it) for it in chosen]
        for v, (variant, p) in enumerate(variants):
            step = (lambda done, _t, v=v: progress(v * len(convs) + done, 2 * len(convs))) if progress else None
            with masked_view(loaded, p):
                raws = generate_raw(loaded, convs, budget, batch_size, thinking, step)
            unfinished[variant] = sum(gemma_bench.final_text(r)[1] for r, _ in raws)
            for it, (raw, _) in zip(chosen, raws):
                row = per.setdefault(it.domain, {}).setdefault(variant, [0, 0])
                row[0] += int(gemma_bench.check(it, raw))
                row[1] += 1
        settings = dict(items=len(chosen), thinking=thinking, max_new_tokens=budget, greedy=True)
    else:
        n = items_per_domain or 40
        for v, (variant, p) in enumerate(variants):
            step = (lambda done, t, v=v: progress(v * t + done, 2 * t)) if progress else None
            with masked_view(loaded, p):
                res = run_suite(loaded.model, loaded.tokenizer, suite, items_per_domain=n,
                                max_new_tokens=max_new_tokens, batch_size=batch_size, progress=step)
            for dom, (c, t) in res.per_domain.items():
                per.setdefault(dom, {})[variant] = [c, t]
        settings = dict(items_per_domain=n, seed=res.seed, greedy=True)
    return TaskReport(suite=suite, per_domain=per, unfinished=unfinished, settings=settings,
                      plan=dict(criterion=plan.criterion, ratio=plan.compression_ratio, experts_kept=plan.num_kept,
                                num_experts=plan.num_experts))


# ================================================================================================
# Model card: one dict in card.eval_table's format
# ================================================================================================

def card_eval_results(plan: PruningPlan, fidelity: FidelityResult | None = None, generation: GenerationReport | None = None,
                      tasks: TaskReport | None = None) -> dict:
    """{task: {"Original": v, "Pruned": v}} plus "_description", for card.CardInputs.eval_results."""
    rows: dict[str, Any] = {}
    notes = []
    if tasks is not None:
        for dom, r in tasks.per_domain.items():
            (oc, ot), (pc, pt) = r["original"], r["pruned"]
            rows[f"{tasks.suite} · {dom} (n={ot})"] = {"Original": f"{oc}/{ot} ({oc / max(ot, 1):.0%})",
                                                       "Pruned": f"{pc}/{pt} ({pc / max(pt, 1):.0%})"}
        rows[f"{tasks.suite} · all (n={tasks.samples})"] = {"Original": f"{tasks.accuracy('original'):.1%}",
                                                           "Pruned": f"{tasks.accuracy('pruned'):.1%}"}
        notes.append(f"Task accuracy: greedy answers on the {tasks.suite} suite, {tasks.samples} items"
                     + (", thinking on." if tasks.settings.get("thinking") else "."))
    if fidelity is not None:
        try:
            pt = fidelity.point(plan.criterion, plan.compression_ratio)
            rows["Next-token KL vs original (nats/token)"] = {"Original": 0.0, "Pruned": pt.kl}
            rows["Top-1 agreement with original"] = {"Original": 1.0, "Pruned": pt.top1}
            rows["Perplexity ratio"] = {"Original": 1.0, "Pruned": pt.ppl_ratio}
            h = fidelity.heldout
            notes.append(f"Fidelity: {h['sequences']} held-out sequences ({h['source']}), {h['scored_tokens']} "
                         f"scored tokens ({h['positions']}), calibration samples excluded.")
        except KeyError:
            notes.append("Fidelity: the sweep does not contain this plan's criterion and ratio.")
    if generation is not None:
        o, p = generation.overall("original"), generation.overall("pruned")
        rows[f"Generation: avg words (n={o.n})"] = {"Original": round(o.avg_words, 1), "Pruned": round(p.avg_words, 1)}
        rows["Generation: loop rate"] = {"Original": f"{o.loop_rate:.0%}", "Pruned": f"{p.loop_rate:.0%}"}
        rows["Generation: collapse rate"] = {"Original": f"{o.collapse_rate:.0%}", "Pruned": f"{p.collapse_rate:.0%}"}
        notes.append(GENERATION_DEFINITIONS)
    rows["_description"] = (f"Pruned = {plan.num_pruned} of {plan.num_experts} experts per layer removed by "
                            f"{plan.criterion} (ratio {plan.compression_ratio:.0%}), evaluated as a masked view. "
                            + " ".join(notes))
    return rows
