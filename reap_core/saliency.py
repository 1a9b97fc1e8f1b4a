"""Stage 4 — saliency: ExpertStats in, scores [L, E] out (higher = more important = kept).

Criteria are plain functions in a registry, each with a one-line definition that the UI and the
model card show. None is assumed best: the app exists to compare them on the user's own model.
An expert never routed on the calibration set scores 0 under every data-driven criterion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import InvalidPlan
from .stats import ExpertStats


def _safe_mean(total: np.ndarray, count: np.ndarray) -> np.ndarray:
    return np.divide(total, count, out=np.zeros_like(total), where=count > 0)


@dataclass(frozen=True)
class Criterion:
    name: str
    label: str
    definition: str
    fn: Callable[[ExpertStats, list[str] | None, int], np.ndarray]


CRITERIA: dict[str, Criterion] = {}


def _register(name: str, label: str, definition: str):
    def wrap(fn):
        CRITERIA[name] = Criterion(name, label, definition, fn)
        return fn
    return wrap


@_register("reap", "REAP", "mean over routed tokens of gate * ||f_j(x)|| (Lasby et al., 2025)")
def reap(stats, categories=None, seed=0):
    return _safe_mean(stats.total("gated_norm_sum", categories), stats.total("count", categories))


@_register("weighted_ean_sum", "Weighted EAN (sum)", "sum over routed tokens of gate * ||f_j(x)|| = frequency x REAP")
def weighted_ean_sum(stats, categories=None, seed=0):
    return stats.total("gated_norm_sum", categories)


@_register("frequency", "Frequency", "number of calibration tokens routed to the expert")
def frequency(stats, categories=None, seed=0):
    return stats.total("count", categories)


@_register("ean_sum", "EAN (sum)", "sum over routed tokens of ||f_j(x)|| (expert activation norm)")
def ean_sum(stats, categories=None, seed=0):
    return stats.total("norm_sum", categories)


@_register("ean_mean", "EAN (mean)", "mean over routed tokens of ||f_j(x)||")
def ean_mean(stats, categories=None, seed=0):
    return _safe_mean(stats.total("norm_sum", categories), stats.total("count", categories))


@_register("weighted_frequency", "Weighted frequency", "sum over routed tokens of the gate")
def weighted_frequency(stats, categories=None, seed=0):
    return stats.total("gate_sum", categories)


@_register("max_activation", "Max activation", "largest |element| of f_j(x) seen on any routed token")
def max_activation(stats, categories=None, seed=0):
    return stats.total("act_max", categories)


@_register("random", "Random (seeded)", "uniform random scores: the baseline any criterion must beat")
def random(stats, categories=None, seed=0):
    return np.random.default_rng(seed).random((stats.num_layers, stats.num_experts))


def criterion_names() -> list[str]:
    return list(CRITERIA)


# Merge methods (built by merge_plan.py) share the criteria's namespace as "merge:<method>", wherever a
# criterion's name goes (fidelity sweeps, reports, plans): labels and definitions, no scores.
MERGE_PREFIX = "merge:"
MERGE_METHODS = {
    "hc-smoe": "HC-SMoE: hierarchical clustering of average expert outputs, frequency-weighted average",
    "m-smoe": "M-SMoE-style: most-used experts dominant, others by router-logit correlation, aligned, "
              "frequency-weighted",
    "ream": "REAM-style: REAP picks the centres, others join the most similar centre, aligned, "
            "saliency-weighted",
}
MERGE_LABELS = {"hc-smoe": "HC-SMoE merge", "m-smoe": "M-SMoE merge", "ream": "REAM merge"}


def _no_scores(stats: ExpertStats, categories: list[str] | None, seed: int) -> np.ndarray:
    raise InvalidPlan("a merge method forms clusters, not per-expert scores (reap_core.merge_plan)")


def get_criterion(name: str) -> Criterion:
    if name.startswith(MERGE_PREFIX):
        method = name[len(MERGE_PREFIX):]
        if method in MERGE_METHODS:
            return Criterion(name, MERGE_LABELS[method], MERGE_METHODS[method], _no_scores)
    try:
        return CRITERIA[name]
    except KeyError:
        raise InvalidPlan(f"unknown criterion '{name}'; choose one of: {', '.join(CRITERIA)}") from None


def compute_scores(stats: ExpertStats, criterion: str, categories: list[str] | None = None,
                   seed: int = 0) -> np.ndarray:
    """Scores [L, E] (float64) for one criterion, optionally from a subset of categories."""
    return np.asarray(get_criterion(criterion).fn(stats, categories, seed), dtype=np.float64)


def all_scores(stats: ExpertStats, seed: int = 0) -> dict[str, np.ndarray]:
    return {name: compute_scores(stats, name, seed=seed) for name in CRITERIA}


def super_experts(stats: ExpertStats, factor: float = 10.0, categories: list[str] | None = None) -> np.ndarray:
    """Bool [L, E]: experts whose max |activation| is >= `factor` x the layer's median.

    Such "super experts" produce rare, huge activations the rest of the network relies on;
    pruning one can break a model even when its average contribution looks small.
    """
    act = stats.total("act_max", categories)
    median = np.median(act, axis=1, keepdims=True)
    return (act >= factor * np.maximum(median, 1e-12)) & (act > 0)
