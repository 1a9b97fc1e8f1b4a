"""What expert merging needs beyond REAP's statistics, from one more pass of the same calibration set.

Per MoE layer, float64:
  out_sum     [E, H]  sum of f_j(x) over the tokens routed to expert j (HC-SMoE's feature: the
                      expert's average output)
  count       [E]     those tokens
  logit_gram  [E, E]  sum over every token of l(x) l(x)^T, l = the router's logits (M-SMoE's and
  logit_sum   [E]     REAM's router-logit similarity: a correlation over tokens needs only these)

Routed-only where it can be: HC-SMoE's paper averages every expert's output over ALL calibration
tokens, which costs E/k times the MoE compute (and an E x T x H pass the reference code runs); here
each expert's output is averaged over the tokens routed to it, which the routed-only kernels compute
anyway (adapters/kernels.py hands them to a sink). An expert no token reached has no output average:
it joins clusters by its router logits only (see merge_plan). The router logits cover every token
(they are computed for every token anyway). Memory: L x E x (H + E) float64 — 30 x 128 x (2816 + 128)
x 8 B = 90 MB for Gemma 4 26B-A4B. It is a second forward pass over the calibration set, not a
change to the REAP statistics file.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .adapters.base import get_by_path
from .adapters.kernels import OUTPUT_SINK
from .calibration import CalibrationSet, iter_batches
from .errors import InvalidPlan
from .model import LoadedModel


@dataclass
class MergeSignals:
    model_id: str
    layer_indices: list[int]
    num_experts: int
    out_sum: np.ndarray          # [L, E, H]
    count: np.ndarray            # [L, E]
    logit_gram: np.ndarray       # [L, E, E]
    logit_sum: np.ndarray        # [L, E]
    tokens: int                  # tokens whose router logits are in the Gram matrices
    calibration_fingerprint: str
    seconds: float

    def mean_outputs(self) -> np.ndarray:
        """[L, E, H] each expert's average output on its routed tokens (zero where it had none)."""
        return self.out_sum / np.maximum(self.count, 1)[..., None]

    def output_similarity(self) -> np.ndarray:
        """[L, E, E] cosine similarity of the experts' average outputs (0 for an expert never routed)."""
        m = self.mean_outputs()
        norm = np.linalg.norm(m, axis=-1, keepdims=True)
        unit = np.divide(m, norm, out=np.zeros_like(m), where=norm > 0)
        return unit @ unit.transpose(0, 2, 1)

    def logit_similarity(self) -> np.ndarray:
        """[L, E, E] correlation over tokens of the experts' router logits (Pearson: a router's common
        offset says nothing about which experts it treats alike)."""
        n = max(self.tokens, 1)
        mean = self.logit_sum / n
        cov = self.logit_gram / n - mean[:, :, None] * mean[:, None, :]
        std = np.sqrt(np.clip(np.diagonal(cov, axis1=1, axis2=2), 0, None))
        denom = std[:, :, None] * std[:, None, :]
        return np.divide(cov, denom, out=np.zeros_like(cov), where=denom > 0)

    def check_matches(self, layer_indices: list[int], num_experts: int) -> None:
        if list(layer_indices) != list(self.layer_indices) or num_experts != self.num_experts:
            raise InvalidPlan(f"the merge signals are for {len(self.layer_indices)} MoE layers x {self.num_experts} "
                              f"experts, the statistics for {len(layer_indices)} x {num_experts}: another model")


def _logits_module(loaded: LoadedModel, layer: torch.nn.Module) -> torch.nn.Module:
    """Where the router's logits come out: the logits module where the family names one (Gemma 4's
    router returns probabilities), else the router, whose first output is its logits."""
    path = loaded.adapter.layout.router_logits_module
    return get_by_path(layer, path) if path else loaded.adapter.router(layer)


def collect_merge_signals(loaded: LoadedModel, calib: CalibrationSet, batch_size: int = 4,
                          progress: Callable[[int, int, int], None] | None = None) -> MergeSignals:
    """One forward pass of `calib` recording the signals above; progress(done, total, tokens) per batch."""
    start = time.perf_counter()
    model, adapter = loaded.model, loaded.adapter
    layers = adapter.moe_layers(model)
    rows = {idx: row for row, (idx, _) in enumerate(layers)}
    L, E = len(layers), loaded.num_experts
    hidden = int(adapter.text_config(loaded.config).hidden_size)
    device = loaded.input_device
    out_sum = torch.zeros(L, E, hidden, dtype=torch.float64, device=device)
    count = torch.zeros(L, E, dtype=torch.float64, device=device)
    gram = torch.zeros(L, E, E, dtype=torch.float64, device=device)
    logit_sum = torch.zeros(L, E, dtype=torch.float64, device=device)
    valid: dict[str, torch.Tensor] = {}

    def sink(layer: int, expert_ids: torch.Tensor, token_index: torch.Tensor, f: torch.Tensor) -> None:
        keep = valid["tokens"].to(f.device)[token_index].to(torch.float64)
        row = rows[layer]
        out_sum[row].index_add_(0, expert_ids.to(device), (f.to(torch.float64) * keep[:, None]).to(device))
        count[row].index_add_(0, expert_ids.to(device), keep.to(device))

    def logits_hook(row: int):
        def hook(module, args, output):
            logits = output[0] if isinstance(output, tuple) else output
            x = logits.reshape(-1, E).to(torch.float64)
            x = x[valid["tokens"].to(x.device)].to(device)
            gram[row] += x.T @ x
            logit_sum[row] += x.sum(0)
        return hook

    handles = [_logits_module(loaded, layer).register_forward_hook(logits_hook(rows[idx])) for idx, layer in layers]
    pad_id = loaded.tokenizer.pad_token_id or 0
    done, tokens, total = 0, 0, len(calib.token_ids)
    token = OUTPUT_SINK.set(sink)
    try:
        with torch.inference_mode(), adapter.observing(model, lambda *args: None):
            for batch in iter_batches(calib, batch_size, pad_id):
                valid["tokens"] = batch.attention_mask.reshape(-1).bool()
                model.model(**batch.model_inputs(device), use_cache=False)
                done += len(batch.sample_ids)
                tokens += int(batch.attention_mask.sum())
                if progress:
                    progress(done, total, tokens)
    finally:
        OUTPUT_SINK.reset(token)
        for h in handles:
            h.remove()
    return MergeSignals(model_id=loaded.model_id, layer_indices=[idx for idx, _ in layers], num_experts=E,
                        out_sum=out_sum.cpu().numpy(), count=count.cpu().numpy(), logit_gram=gram.cpu().numpy(),
                        logit_sum=logit_sum.cpu().numpy(), tokens=tokens,
                        calibration_fingerprint=calib.fingerprint(), seconds=time.perf_counter() - start)


def collect_for_stats(loaded: LoadedModel, stats, batch_size: int = 4,
                      progress: Callable[[int, int, int], None] | None = None,
                      allow_local_files: bool = True) -> MergeSignals:
    """The merge signals of the very calibration `stats` came from: rebuilt from its record (spec, max
    tokens, samples per category), refused unless its fingerprint is the statistics' one."""
    from .calibration import build_calibration
    from .errors import StatisticsError

    record = stats.calibration
    spec, fingerprint = record.get("spec"), record.get("fingerprint")
    if not spec or not fingerprint:
        raise StatisticsError("the statistics file does not record its calibration data: calibrate again to merge")
    per_category = [v.get("samples") for v in (record.get("summary") or {}).values() if v.get("samples")]
    for limit in (None, max(per_category, default=None)):
        calib = build_calibration(spec, loaded.tokenizer, max_tokens=int(record.get("max_tokens") or 512),
                                  samples_per_category=limit, processor=loaded.processor,
                                  allow_local_files=allow_local_files)
        if calib.fingerprint() == fingerprint:
            return collect_merge_signals(loaded, calib, batch_size=batch_size, progress=progress)
    raise StatisticsError(f"the calibration data '{spec}' is no longer what the statistics were computed on "
                          f"(fingerprint {calib.fingerprint()} vs {fingerprint}): merging needs both from the same "
                          f"data — calibrate again")
