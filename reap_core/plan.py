"""Stage 5 — plan: scores [L, E] + ratio in, a frozen PruningPlan out.

The plan is plain, JSON-serialisable data (criterion, ratio, kept experts per layer, the
calibration it came from). The masked view, the exporter and the recipe file all consume the
same object, so what you chat with is exactly what you export.

Selection: n_prune = floor(E * ratio) lowest-scoring experts in every layer (E=128: 0.20 -> 103
kept, 0.30 -> 90 kept); the same count everywhere, because transformers and vLLM load every family
with one expert count for all layers. Ties go to the lower expert id (stable sort).
Group-limited routing (DeepSeek-V3: 8 groups, a token picks from 4): n_prune is rounded down to a
multiple of the groups and each group loses the same number (its lowest), so the sliced model
still has equal groups; each group must keep 2 (a group's score is its two best) and the groups a
token may pick must still hold top_k experts.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from .errors import InvalidPlan
from .saliency import compute_scores, get_criterion, super_experts
from .stats import ExpertStats


def experts_to_prune(num_experts: int, ratio: float) -> int:
    # round first: 100 * 0.29 is 28.999999999999996 in floating point, and floor must say 29
    return math.floor(round(num_experts * ratio, 9))


def check_ratio(ratio: float, num_experts: int, top_k: int, groups: tuple[int, int] = (1, 1)) -> int:
    """Number of experts to prune per layer; InvalidPlan if the ratio is unusable.
    `groups`: (groups, groups chosen per token) of group-limited routing."""
    try:
        ratio = float(ratio)
    except (TypeError, ValueError):
        raise InvalidPlan(f"compression ratio must be a number, got {ratio!r}") from None
    if not (0.0 < ratio < 1.0) or math.isnan(ratio):
        raise InvalidPlan(f"compression ratio must be between 0 and 1 (exclusive), got {ratio}")
    n_prune = experts_to_prune(num_experts, ratio)
    n_groups, chosen = groups
    if n_groups > 1:
        n_prune -= n_prune % n_groups
        per_group = (num_experts - n_prune) // n_groups
        if n_prune == 0:
            raise InvalidPlan(f"ratio {ratio:g} prunes fewer than one expert per group ({n_groups} groups of "
                              f"{num_experts // n_groups}); use a ratio >= {n_groups / num_experts:.3f}")
        if per_group < 2 or per_group * chosen < top_k:
            raise InvalidPlan(f"ratio {ratio:g} keeps {per_group} experts in each of {n_groups} groups; the router "
                              f"needs 2 per group and {top_k} in the {chosen} groups a token picks from")
    if num_experts - n_prune < top_k:
        max_ratio = (num_experts - top_k) / num_experts
        raise InvalidPlan(f"ratio {ratio:g} keeps {num_experts - n_prune} of {num_experts} experts per layer, "
                          f"fewer than the {top_k} the router picks for every token; use a ratio <= {max_ratio:.3f}")
    return n_prune


@dataclass(frozen=True)
class PruningPlan:
    criterion: str
    compression_ratio: float
    num_experts: int                       # experts per layer before pruning
    top_k: int
    layer_indices: tuple[int, ...]         # decoder layer of each row below
    kept: tuple[tuple[int, ...], ...]      # per MoE layer, ascending expert ids
    protected: tuple[tuple[int, ...], ...] = ()
    seed: int = 0
    categories: tuple[str, ...] | None = None   # calibration categories the scores came from (None = all)
    calibration_fingerprint: str = ""
    model_id: str = ""
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def num_kept(self) -> int:
        return len(self.kept[0]) if self.kept else self.num_experts

    @property
    def num_pruned(self) -> int:
        return self.num_experts - self.num_kept

    def pruned(self, row: int) -> tuple[int, ...]:
        kept = set(self.kept[row])
        return tuple(e for e in range(self.num_experts) if e not in kept)

    def pruned_mask(self) -> np.ndarray:
        """Bool [L, E], True = pruned."""
        mask = np.ones((len(self.kept), self.num_experts), dtype=bool)
        for row, kept in enumerate(self.kept):
            mask[row, list(kept)] = False
        return mask

    def to_dict(self) -> dict:
        d = asdict(self)
        d["kept"] = [list(k) for k in self.kept]
        d["protected"] = [list(p) for p in self.protected]
        d["layer_indices"] = list(self.layer_indices)
        d["categories"] = list(self.categories) if self.categories is not None else None
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, d: dict) -> "PruningPlan":
        return cls(criterion=d["criterion"], compression_ratio=float(d["compression_ratio"]),
                   num_experts=int(d["num_experts"]), top_k=int(d["top_k"]),
                   layer_indices=tuple(d["layer_indices"]), kept=tuple(tuple(k) for k in d["kept"]),
                   protected=tuple(tuple(p) for p in d.get("protected", ())), seed=int(d.get("seed", 0)),
                   categories=tuple(d["categories"]) if d.get("categories") is not None else None,
                   calibration_fingerprint=d.get("calibration_fingerprint", ""), model_id=d.get("model_id", ""),
                   extra=d.get("extra", {}))


def plan_from_scores(scores: np.ndarray, ratio: float, top_k: int, layer_indices: list[int],
                     criterion: str = "custom", protected: np.ndarray | None = None,
                     groups: tuple[int, int] = (1, 1), **meta) -> PruningPlan:
    """Prune the floor(E*ratio) lowest scores of every layer (the same number in every group of a
    group-limited router); `protected` [L, E] are never pruned."""
    scores = np.asarray(scores, dtype=np.float64)
    num_layers, num_experts = scores.shape
    n_prune = check_ratio(ratio, num_experts, top_k, groups)
    n_keep = num_experts - n_prune
    ranked = scores.copy()
    if protected is not None:
        counts = protected.sum(axis=1)
        if counts.max(initial=0) > n_keep:
            layer = int(counts.argmax())
            raise InvalidPlan(f"layer {layer_indices[layer]} has {int(counts[layer])} protected super experts, "
                              f"more than the {n_keep} this ratio keeps; lower the ratio or turn protection off")
        ranked[protected] = np.inf
    kept, prot = [], []
    size = num_experts // groups[0]
    for row in range(num_layers):
        keep = []
        for start in range(0, num_experts, size):                 # one group (all experts without groups)
            if protected is not None and protected[row, start:start + size].sum() > size - n_prune // groups[0]:
                raise InvalidPlan(f"layer {layer_indices[row]}: a group of {size} experts has more protected super "
                                  f"experts than this ratio keeps in it; lower the ratio or turn protection off")
            order = np.argsort(ranked[row, start:start + size], kind="stable")   # ascending: pruned first
            keep += [start + int(e) for e in order[n_prune // groups[0]:]]
        kept.append(tuple(sorted(keep)))
        prot.append(tuple(int(e) for e in np.flatnonzero(protected[row])) if protected is not None else ())
    return PruningPlan(criterion=criterion, compression_ratio=float(ratio), num_experts=num_experts, top_k=top_k,
                       layer_indices=tuple(int(i) for i in layer_indices), kept=tuple(kept),
                       protected=tuple(prot) if protected is not None else (), **meta)


def make_plan(stats: ExpertStats, ratio: float, criterion: str = "reap", protect_super_experts: bool = False,
              super_expert_factor: float = 10.0, categories: list[str] | None = None, seed: int = 0) -> PruningPlan:
    """The plan the CLI's `prune` and the app's Prune button both use."""
    get_criterion(criterion)
    shard = stats.calibration.get("shard")
    if shard:
        raise InvalidPlan(f"these statistics are one shard of a calibration ({shard[0] + 1} of {shard[1]}): combine "
                          f"every shard first (python -m reap_core merge-stats FILES… --out all.npz)")
    check_ratio(ratio, stats.num_experts, stats.top_k, stats.expert_groups)
    scores = compute_scores(stats, criterion, categories=categories, seed=seed)
    protected = super_experts(stats, super_expert_factor, categories) if protect_super_experts else None
    return plan_from_scores(scores, ratio, stats.top_k, stats.layer_indices, criterion=criterion,
                            protected=protected, groups=stats.expert_groups, seed=seed,
                            categories=tuple(categories) if categories else None,
                            calibration_fingerprint=stats.fingerprint(), model_id=stats.model_id,
                            extra={"super_expert_factor": super_expert_factor} if protect_super_experts else {})
