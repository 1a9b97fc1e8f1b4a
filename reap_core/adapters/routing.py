"""Routing rules: what a family's router computes, written once per rule, with pruned experts removed
from what the selection sees. The masked view (reap_core.masking) routes through these.

Why not just mask the router's logits: most transformers routers compute their logits inside their
forward (`F.linear(hidden, self.weight)`), with no submodule to hook, and a router that selects with
a bias (`scores + e_score_correction_bias`, DeepSeek-V3 / GLM-4.5 / MiniMax-M2) would still pick a
pruned expert whose logit is -inf (sigmoid(-inf) = 0, plus its bias). So a masked router sets the
pruned experts' *selection* scores to -inf, then selects and weights exactly as the family does.

Every rule has the router's own forward signature plus a leading `pruned` mask (bool, [E] for every
token or [N, E] per token; True = pruned) and returns what the router returns. With no expert pruned
a rule reproduces the router (tests/test_families.py checks each family against transformers), and
masked == sliced for every family (the same file).

Rules and who uses them (the gate = the weight that multiplies an expert's output in the layer sum):
  softmax_topk    softmax over all experts, top-k, renormalised over the k when the router says so
                  (`norm_topk_prob`; Mixtral always): Qwen3-MoE, Qwen3-Next, Qwen3.5-MoE, Qwen2-MoE,
                  OLMoE, Mixtral
  topk_softmax    top-k of the logits, softmax over those k: gpt-oss (router with bias), GraniteMoE
  sigmoid_bias    sigmoid scores; selection on scores + correction bias, group-limited when the
                  router has groups (`num_group` > 1: the best `topk_group` groups by the sum of
                  their two best scores); gate = the chosen sigmoid scores, renormalised when asked,
                  times `routed_scaling_factor`: DeepSeek-V3 / Kimi-K2, GLM-4.5/4.6, MiniMax-M2
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

NEG_INF = float("-inf")


def _flat(router: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    return hidden_states.reshape(-1, router.weight.shape[-1])


def softmax_topk(pruned: torch.Tensor, router: nn.Module, hidden_states: torch.Tensor, *,
                 weights_in_logits_dtype: bool = True):
    logits = F.linear(_flat(router, hidden_states), router.weight)
    probs = F.softmax(logits.masked_fill(pruned, NEG_INF), dim=-1, dtype=torch.float)
    top, index = torch.topk(probs, router.top_k, dim=-1)
    if getattr(router, "norm_topk_prob", True):
        top = top / top.sum(dim=-1, keepdim=True)
    return logits, (top.to(logits.dtype) if weights_in_logits_dtype else top), index


def topk_softmax(pruned: torch.Tensor, router: nn.Module, hidden_states: torch.Tensor, *,
                 float_logits: bool = False):
    hidden = _flat(router, hidden_states)
    logits = F.linear(hidden, router.weight, getattr(router, "bias", None))
    if float_logits:
        logits = logits.float()
    top, index = torch.topk(logits.masked_fill(pruned, NEG_INF), router.top_k, dim=-1)
    weights = F.softmax(top, dim=-1, dtype=top.dtype)
    return logits, (weights.type_as(hidden) if float_logits else weights), index


def sigmoid_bias(pruned: torch.Tensor, router: nn.Module, hidden_states: torch.Tensor,
                 e_score_correction_bias: torch.Tensor | None = None, *, float32_logits: bool = True):
    hidden = _flat(router, hidden_states)
    if float32_logits:      # DeepSeek-V3 / GLM: logits in float32
        logits = F.linear(hidden.float(), router.weight.float())
    else:                   # MiniMax-M2: logits in the weights' dtype, sigmoid in float32
        logits = F.linear(hidden.to(router.weight.dtype), router.weight)
    scores = logits.float().sigmoid()
    bias = router.e_score_correction_bias if e_score_correction_bias is None else e_score_correction_bias
    choice = (scores + bias).masked_fill(pruned, NEG_INF)
    groups = int(getattr(router, "num_group", 1) or 1)
    if groups > 1:
        per_group = choice.view(-1, groups, choice.shape[-1] // groups)
        group_scores = per_group.topk(2, dim=-1)[0].sum(dim=-1)
        best = torch.topk(group_scores, k=router.topk_group, dim=-1, sorted=False)[1]
        keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, best, True)
        choice = per_group.masked_fill(~keep[..., None], NEG_INF).reshape(choice.shape)
    index = torch.topk(choice, k=router.top_k, dim=-1, sorted=False)[1]
    weights = scores.gather(1, index)
    if getattr(router, "norm_topk_prob", True):
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return logits, weights * getattr(router, "routed_scaling_factor", 1.0), index


RULES: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {
    "softmax_topk": softmax_topk, "topk_softmax": topk_softmax, "sigmoid_bias": sigmoid_bias}
