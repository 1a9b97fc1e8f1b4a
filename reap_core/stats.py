"""The statistics object between the observer and everything after it.

Per calibration category C, MoE layer L and expert E, float64:
  count           routed tokens
  gate_sum        sum of gates (gate = the combine weight the model applies, see the adapter)
  norm_sum        sum of ||f_j(x)||_2 (expert output before weighting)
  gated_norm_sum  sum of gate * ||f_j(x)||_2
  norm_max        max of ||f_j(x)||_2
  act_max         max |element| of f_j(x)   (finds "super experts")
plus, per (layer, expert), the calibration tokens where gate*||f|| peaked, as text snippets.

It is small ([C, L, E] arrays), so a calibration runs once and every criterion, ratio and
category view afterwards is instant; it saves to one .npz file (no pickle) to share or reload.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import StatisticsError

SUM_STATS = ("count", "gate_sum", "norm_sum", "gated_norm_sum")
MAX_STATS = ("norm_max", "act_max")
FORMAT_VERSION = 1


@dataclass
class ExpertStats:
    model_id: str
    layer_indices: list[int]            # decoder layer of each row
    num_experts: int
    top_k: int
    categories: list[str]
    arrays: dict[str, np.ndarray]       # name -> [C, L, E] float64
    tokens_per_category: list[int]
    calibration: dict = field(default_factory=dict)   # spec, fingerprint, max_tokens, per-category summary
    top_tokens: list | None = None      # [L][E] -> list of {score, category, before, token, after}

    @property
    def num_layers(self) -> int:
        return len(self.layer_indices)

    @property
    def num_tokens(self) -> int:
        return int(sum(self.tokens_per_category))

    def total(self, name: str, categories: list[str] | None = None) -> np.ndarray:
        """[L, E] statistic over all (or the chosen) categories."""
        if name not in self.arrays:
            raise StatisticsError(f"unknown statistic '{name}'; known: {', '.join(self.arrays)}")
        arr = self.arrays[name]
        if categories:
            missing = [c for c in categories if c not in self.categories]
            if missing:
                raise StatisticsError(f"category {missing[0]!r} is not in these statistics "
                                      f"({', '.join(self.categories)})")
            arr = arr[[self.categories.index(c) for c in categories]]
        return arr.max(axis=0) if name in MAX_STATS else arr.sum(axis=0)

    def fingerprint(self) -> str:
        return str(self.calibration.get("fingerprint", ""))

    # --- persistence ----------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (temp file + rename), so a crash never leaves a half file."""
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(path.suffix + ".npz") if path.suffix else path.with_suffix(".npz")
        meta = dict(format=FORMAT_VERSION, model_id=self.model_id, layer_indices=self.layer_indices,
                    num_experts=self.num_experts, top_k=self.top_k, categories=self.categories,
                    tokens_per_category=self.tokens_per_category, calibration=self.calibration,
                    top_tokens=self.top_tokens)
        tmp = path.with_name(path.name + ".tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez_compressed(f, meta=np.array(json.dumps(meta)), **self.arrays)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ExpertStats":
        path = Path(path)
        if not path.is_file():
            raise StatisticsError(f"statistics file not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                arrays = {k: data[k].astype(np.float64) for k in SUM_STATS + MAX_STATS}
        except (OSError, ValueError, KeyError) as exc:
            raise StatisticsError(f"{path.name} is not a REAP Studio statistics file ({exc})") from None
        if meta.get("format") != FORMAT_VERSION:
            raise StatisticsError(f"{path.name}: unsupported statistics format {meta.get('format')}")
        stats = cls(model_id=meta["model_id"], layer_indices=meta["layer_indices"], num_experts=meta["num_experts"],
                    top_k=meta["top_k"], categories=meta["categories"], arrays=arrays,
                    tokens_per_category=meta["tokens_per_category"], calibration=meta.get("calibration", {}),
                    top_tokens=meta.get("top_tokens"))
        expected = (len(stats.categories), stats.num_layers, stats.num_experts)
        if any(a.shape != expected for a in arrays.values()):
            raise StatisticsError(f"{path.name}: arrays do not match the shape {expected} in its header")
        return stats

    def check_matches(self, num_layers: int, num_experts: int) -> None:
        """Statistics from another model would prune the wrong experts: refuse them."""
        if (self.num_layers, self.num_experts) != (num_layers, num_experts):
            raise StatisticsError(
                f"these statistics are for {self.num_layers} MoE layers x {self.num_experts} experts "
                f"({self.model_id}), but the model has {num_layers} x {num_experts}")
