"""Every supported MoE family on a tiny random model of its real transformers class (CPU, float32).

Per family:
  - observer = brute force: each routed expert run by hand (float64) on the MoE block's inputs, with
    the gate computed here from the family's router definition (not read back from the model);
  - masked view = sliced = saved + reloaded with the Auto classes (max |delta logits| <= 1e-5, same
    greedy tokens), with the plan pruning the experts a selection bias favours most, and a grouped
    router (DeepSeek-V3: 4 groups, a token picks from 2);
  - a masked view that keeps every expert is the model itself (the routing rule = the router).
"""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from reap_core.adapters import ADAPTERS, get_by_path
from reap_core.errors import InvalidPlan
from reap_core.masking import masked_view
from reap_core.model import wrap_model
from reap_core.observer import observe
from reap_core.plan import plan_from_scores
from reap_core.prune import slice_model
from reap_core.tiny import TINY_FAMILY_CONFIGS, build_tiny_family

FAMILIES = list(TINY_FAMILY_CONFIGS)
SIGMOID_FAMILIES = ("glm4_moe", "deepseek_v3", "minimax_m2")


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tokenizer):
    model = build_tiny_family(request.param, vocab_size=len(tokenizer))
    return request.param, wrap_model(model, tokenizer, model_id=f"tiny-{request.param}")


def test_every_family_has_a_tiny_model_and_an_adapter():
    covered = {ADAPTERS[f].layout.family for f in ADAPTERS if f != "gemma4"}
    built = {wrap_model(build_tiny_family(t), None).adapter.layout.family for t in FAMILIES}
    assert covered == built


# --- the gate and the experts, by hand --------------------------------------------------------

def _hand_routing(model_type: str, cfg, block, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(expert ids [N, K], gates [N, K]) from the family's published router definition, float64."""
    k = cfg.num_experts_per_tok
    router = block.router if model_type in ("gpt_oss", "granitemoe") else block.gate
    logits = x @ router.weight.double().T
    if model_type in ("gpt_oss", "granitemoe"):          # top-k of the logits, softmax over those k
        if model_type == "gpt_oss":
            logits = logits + router.bias.double()
        top, ids = logits.topk(k, dim=-1)
        return ids, top.softmax(-1)
    if model_type in SIGMOID_FAMILIES:                  # sigmoid; choose with the bias; gate without it
        scores = logits.sigmoid()
        bias = (block.e_score_correction_bias if model_type == "minimax_m2" else router.e_score_correction_bias)
        choice = scores + bias.double()
        groups = getattr(cfg, "n_group", 1) or 1
        if groups > 1:
            size = choice.shape[1] // groups
            for n in range(choice.shape[0]):
                group_score = [sorted(choice[n, g * size:(g + 1) * size].tolist())[-2:] for g in range(groups)]
                best = sorted(range(groups), key=lambda g: -sum(group_score[g]))[:cfg.topk_group]
                for g in set(range(groups)) - set(best):
                    choice[n, g * size:(g + 1) * size] = -np.inf
        ids = choice.topk(k, dim=-1).indices
        gates = scores.gather(1, ids)
        gates = gates / gates.sum(-1, keepdim=True)     # every released sigmoid router renormalises
        return ids, gates * getattr(cfg, "routed_scaling_factor", 1.0)
    probs = logits.softmax(-1)                          # softmax over all, top-k, maybe renormalised
    top, ids = probs.topk(k, dim=-1)
    renorm = model_type in ("mixtral", "qwen3_5_moe_text") or cfg.norm_topk_prob
    return ids, top / top.sum(-1, keepdim=True) if renorm else top


def _hand_expert(model_type: str, cfg, experts, e: int, x: torch.Tensor) -> torch.Tensor:
    """f_e(x) [n, H], float64, from the weights and the family's published expert MLP."""
    if model_type == "gpt_oss":                         # [H, 2I] interleaved gate/up, clamped SwiGLU, biases
        gu = x @ experts.gate_up_proj[e].double() + experts.gate_up_proj_bias[e].double()
        gate, up = gu[:, ::2].clamp(max=cfg.swiglu_limit), gu[:, 1::2].clamp(-cfg.swiglu_limit, cfg.swiglu_limit)
        h = (up + 1) * gate * torch.sigmoid(gate * cfg.swiglu_alpha)
        return h @ experts.down_proj[e].double() + experts.down_proj_bias[e].double()
    assert cfg.hidden_act == "silu"
    w = experts.gate_up_proj[e].double()                 # [2I, H]: gate rows, then up rows
    width = w.shape[0] // 2
    h = F.silu(x @ w[:width].T) * (x @ w[width:].T)
    return h @ experts.down_proj[e].double().T


def _brute_force_stats(model_type: str, loaded, calib) -> dict[str, np.ndarray]:
    model, adapter, cfg = loaded.model, loaded.adapter, loaded.config
    layers = adapter.moe_layers(model)
    L, E = len(layers), loaded.num_experts
    out = {k: np.zeros((L, E)) for k in ("count", "gate_sum", "norm_sum", "gated_norm_sum", "norm_max", "act_max")}
    captured = {}
    blocks = [get_by_path(layer, adapter.layout.experts_module.rpartition(".")[0]) for _, layer in layers]
    hooks = [b.register_forward_pre_hook(lambda mod, args, row=row: captured.__setitem__(row, args[0]))
             for row, b in enumerate(blocks)]
    try:
        with torch.no_grad():
            for ids in calib.token_ids:
                model(input_ids=torch.tensor([ids]))
                for row, block in enumerate(blocks):
                    x = captured[row].reshape(-1, captured[row].shape[-1]).double()
                    expert_ids, gates = _hand_routing(model_type, cfg, block, x)
                    experts = adapter.experts(layers[row][1])
                    for n in range(x.shape[0]):
                        for slot in range(expert_ids.shape[1]):
                            e, g = int(expert_ids[n, slot]), abs(float(gates[n, slot]))
                            f = _hand_expert(model_type, cfg, experts, e, x[n:n + 1])[0]
                            norm, act = float(f.norm()), float(f.abs().max())
                            out["count"][row, e] += 1
                            out["gate_sum"][row, e] += g
                            out["norm_sum"][row, e] += norm
                            out["gated_norm_sum"][row, e] += g * norm
                            out["norm_max"][row, e] = max(out["norm_max"][row, e], norm)
                            out["act_max"][row, e] = max(out["act_max"][row, e], act)
    finally:
        for h in hooks:
            h.remove()
    return out


def test_observer_equals_brute_force(family, calib):
    model_type, loaded = family
    stats = observe(loaded, calib, batch_size=1, top_tokens_per_expert=0)
    expected = _brute_force_stats(model_type, loaded, calib)
    assert expected["count"].sum() == calib.num_tokens * loaded.top_k * len(loaded.moe_layer_indices)
    for name, want in expected.items():
        np.testing.assert_allclose(stats.total(name), want, rtol=1e-4, atol=1e-6, err_msg=f"{model_type} {name}")


# --- masked view = slicing ----------------------------------------------------------------------

def _plan(loaded, model_type: str):
    """Prune half the experts of every layer; for a biased router, exactly those its bias favours most."""
    cfg, adapter = loaded.config, loaded.adapter
    rng = np.random.default_rng(0)
    scores = rng.random((len(loaded.moe_layer_indices), loaded.num_experts))
    if model_type in SIGMOID_FAMILIES:
        for row, (_, layer) in enumerate(adapter.moe_layers(loaded.model)):
            block = get_by_path(layer, adapter.layout.experts_module.rpartition(".")[0])
            bias = block.e_score_correction_bias if model_type == "minimax_m2" else block.gate.e_score_correction_bias
            scores[row] = -bias.numpy()
    groups = (adapter.expert_groups(cfg), adapter.groups_chosen(cfg))
    return plan_from_scores(scores, 0.5, loaded.top_k, loaded.moe_layer_indices, groups=groups)


def _logit_only_mask_would_pick_a_pruned_expert(model_type, loaded, plan, ids) -> bool:
    """What masking the router logits alone would do on a biased router: sigmoid(-inf) = 0, plus the bias."""
    adapter, captured = loaded.adapter, {}
    layers = adapter.moe_layers(loaded.model)
    blocks = [get_by_path(layer, adapter.layout.experts_module.rpartition(".")[0]) for _, layer in layers]
    hooks = [b.register_forward_pre_hook(lambda mod, args, row=row: captured.__setitem__(row, args[0]))
             for row, b in enumerate(blocks)]
    with torch.no_grad():
        loaded.model(input_ids=ids)
    for h in hooks:
        h.remove()
    pruned = torch.as_tensor(plan.pruned_mask())
    for row, block in enumerate(blocks):
        x = captured[row].reshape(-1, captured[row].shape[-1])
        scores = (x @ block.gate.weight.T).sigmoid().masked_fill(pruned[row], 0.0)
        bias = block.e_score_correction_bias if model_type == "minimax_m2" else block.gate.e_score_correction_bias
        chosen = (scores + bias).topk(loaded.top_k, dim=-1).indices
        if pruned[row][chosen].any():
            return True
    return False


def test_masked_view_equals_sliced_saved_and_reloaded(family, tmp_path):
    model_type, loaded = family
    plan = _plan(loaded, model_type)
    ids = torch.tensor([[5 + (7 * i) % 90 for i in range(14)], [40 + (3 * i) % 50 for i in range(14)]])
    if model_type in SIGMOID_FAMILIES:   # the case the rule exists for must really occur here
        assert _logit_only_mask_would_pick_a_pruned_expert(model_type, loaded, plan, ids)
    sliced = wrap_model(copy.deepcopy(loaded.model), loaded.tokenizer)
    slice_model(sliced, plan)
    sliced.model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.adapter.num_experts(reloaded.config) == plan.num_kept
    with torch.no_grad():
        original = loaded.model(input_ids=ids).logits
        with masked_view(loaded, plan):
            masked = loaded.model(input_ids=ids).logits
            masked_tokens = loaded.model.generate(ids[:1], max_new_tokens=6, do_sample=False)
        assert (masked - original).abs().max() > 1e-2, "the plan must change the model for this test to mean anything"
        for other in (sliced.model, reloaded):
            assert (masked - other(input_ids=ids).logits).abs().max() <= 1e-5
        assert torch.equal(masked_tokens, reloaded.generate(ids[:1], max_new_tokens=6, do_sample=False))


def test_masked_view_keeping_every_expert_is_the_model(family):
    model_type, loaded = family
    plan = _plan(loaded, model_type)
    keep_all = replace(plan, kept=tuple(tuple(range(plan.num_experts)) for _ in plan.kept))
    ids = torch.tensor([[3 + (11 * i) % 97 for i in range(10)]])
    with torch.no_grad():
        plain = loaded.model(input_ids=ids).logits
        with masked_view(loaded, keep_all):
            routed_by_rule = loaded.model(input_ids=ids).logits
    assert torch.allclose(plain, routed_by_rule, atol=1e-6, rtol=0)


# --- group-limited plans ----------------------------------------------------------------------

def test_grouped_plans_prune_the_same_number_in_every_group():
    scores = np.arange(16, dtype=float)[None, :] * np.array([[1.0]])      # group g = experts 4g..4g+3
    plan = plan_from_scores(scores, 0.5, top_k=4, layer_indices=[1], groups=(4, 2))
    assert plan.kept == ((2, 3, 6, 7, 10, 11, 14, 15),)                  # the 2 best of each group of 4
    # 0.4 of 16 = 6.4 -> 6, rounded down to a multiple of 4 groups -> 4 pruned, one per group
    assert plan_from_scores(scores, 0.4, top_k=4, layer_indices=[1], groups=(4, 2)).num_kept == 12
    with pytest.raises(InvalidPlan, match="2 per group"):
        plan_from_scores(scores, 0.75, top_k=2, layer_indices=[1], groups=(4, 2))    # 1 left per group
    with pytest.raises(InvalidPlan, match="fewer than one expert per group"):
        plan_from_scores(scores, 0.2, top_k=2, layer_indices=[1], groups=(4, 2))     # 3 pruned < 4 groups


# --- export: checkpoints as they are on the Hub --------------------------------------------------

def test_streaming_export_equals_in_memory_in_the_checkpoint_format(family, calib, tmp_path):
    """save_pretrained writes each family's Hub format (one tensor per expert for most, fused for
    gpt-oss / GraniteMoE); streaming from it and slicing the model in memory give the same bytes,
    the pruned experts gone, the kept ones renumbered, and the folder reloads as the masked model."""
    import json

    from reap_core.export import export_pruned
    from reap_core.plan import make_plan
    from reap_core.shards import SINGLE_FILE, read_header

    model_type, loaded = family
    source = tmp_path / "source"
    loaded.model.save_pretrained(source)
    loaded.tokenizer.save_pretrained(source)
    original = wrap_model(loaded.model, loaded.tokenizer, model_id=str(source))
    stats = observe(original, calib, batch_size=4, top_tokens_per_expert=0)
    plan = make_plan(stats, 0.5)
    results = {how: export_pruned(str(source), plan, stats, tmp_path / how, loaded=original, streaming=how == "streaming")
               for how in ("streaming", "in-memory")}
    assert all(r.max_abs_diff is not None and r.max_abs_diff <= 1e-5 for r in results.values())
    files = [(tmp_path / how / SINGLE_FILE).read_bytes() for how in results]
    assert files[0] == files[1]
    names = set(read_header(tmp_path / "streaming" / SINGLE_FILE)[0]) - {"__metadata__"}
    source_names = set(read_header(source / SINGLE_FILE)[0]) - {"__metadata__"}
    patterns = [loaded.adapter.checkpoint_expert_lists(layer) for layer in plan.layer_indices]
    expert_id = lambda n: next((int(m.group(2)) for p in patterns if (m := p.match(n))), None)  # noqa: E731
    per_expert = [n for n in source_names if expert_id(n) is not None]
    if per_expert:     # one tensor per expert: ids 0..kept-1 remain, the pruned half of the tensors gone
        assert {expert_id(n) for n in names} - {None} == set(range(plan.num_kept))
        assert len(names) == len(source_names) - len(per_expert) * plan.num_pruned // plan.num_experts
    else:              # fused: the same names, expert axes shrunk
        assert names == source_names
    card = (tmp_path / "streaming" / "README.md").read_text()
    assert ("| Shared experts |" in card) == bool(loaded.adapter.layout.shared_experts)
    assert ("| Expert groups |" in card) == (model_type == "deepseek_v3")
    config = json.loads((tmp_path / "streaming" / "config.json").read_text())
    source_config = json.loads((source / "config.json").read_text())
    changed = {k: v for k, v in config.items() if source_config.get(k) != v}
    assert list(changed.values()) == [plan.num_kept] and source_config[next(iter(changed))] == plan.num_experts


def test_reasoning_is_split_in_every_familys_markup():
    from reap_core.chat import reasoning_unfinished, split_reasoning

    cases = {"<|channel>thought\nfirst 2, then 3<channel|>5<turn|>": ("first 2, then 3", "5"),           # Gemma 4
             "<think>\n2 + 3\n</think>\n\n5<|im_end|>": ("2 + 3", "5"),                                       # Qwen3, GLM
             "<|channel|>analysis<|message|>2 + 3<|end|><|start|>assistant<|channel|>final<|message|>5<|return|>":
                 ("2 + 3", "5"),                                                                              # gpt-oss
             "2 + 3</think>\n\n5<|im_end|>": ("2 + 3", "5"),               # <think> opened by the template
             "5</s>": ("", "5")}                                                                              # none
    for raw, want in cases.items():
        assert split_reasoning(raw) == want
    assert reasoning_unfinished("<think>\n2 + 3 is") and not reasoning_unfinished("<think>x</think>5")
    assert split_reasoning("<think>\n2 + 3 is")[1] == ""
