"""The observer measures exactly what REAP defines, from routed tokens only, without changing the model."""

import numpy as np
import pytest
import torch

from reap_core.observer import observe
from reap_core.stats import MAX_STATS, SUM_STATS, ExpertStats


def reference_gates(router, h: torch.Tensor, top_k: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Gemma 4's routing written out from the router's weights, in float64, without calling the router
    (transformers 5.23 models/gemma4/modeling_gemma4.py, Gemma4TextRouter.forward):
    parameter-free RMS norm -> x `scale` x H^-0.5 -> `proj` (no bias) -> softmax over all E experts
    -> top-k -> renormalise the k probabilities to sum 1 -> x `per_expert_scale` of each chosen expert.
    Returns (expert ids [T, K], gates [T, K])."""
    h = h.double()
    H = h.shape[-1]
    x = h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    x = x * router.scale.double() * H ** -0.5
    logits = x @ router.proj.weight.double().T                          # [T, E]
    probs = torch.exp(logits - logits.max(-1, keepdim=True).values)
    probs = probs / probs.sum(-1, keepdim=True)                         # softmax over all E
    top_p, top_i = probs.topk(top_k, dim=-1)
    gates = top_p / top_p.sum(-1, keepdim=True) * router.per_expert_scale.double()[top_i]
    return top_i, gates


@torch.no_grad()
def brute_force_stats(loaded, calib):
    """Recompute every statistic by hand: one sample at a time, the gates from the router's weights
    (reference_gates), each routed expert run explicitly on the experts' input."""
    adapter, model = loaded.adapter, loaded.model
    layers = adapter.moe_layers(model)
    L, E, C, K = len(layers), loaded.num_experts, len(calib.categories), loaded.top_k
    eps = adapter.text_config(model.config).rms_norm_eps
    acc = {k: np.zeros((C, L, E)) for k in SUM_STATS + MAX_STATS}
    router_in, experts_in = {}, {}
    hooks = []
    for row, (_, layer) in enumerate(layers):
        hooks.append(layer.router.register_forward_pre_hook(
            lambda mod, args, row=row: router_in.__setitem__(row, args[0].detach().clone())))
        hooks.append(layer.experts.register_forward_pre_hook(
            lambda mod, args, row=row: experts_in.__setitem__(row, [a.detach().clone() for a in args])))
    try:
        for ids, cat in zip(calib.token_ids, calib.category_ids):
            model.model(input_ids=torch.tensor([ids]), use_cache=False)
            for row, (_, layer) in enumerate(layers):
                x, model_idx, model_w = experts_in[row]
                idx, gates = reference_gates(layer.router, router_in[row], K, eps)
                # the model routes to the experts the reference picks, with the reference's weights
                assert torch.equal(idx.sort(-1).values, model_idx.sort(-1).values), f"layer row {row}: routing"
                order_ref, order_model = idx.argsort(-1), model_idx.argsort(-1)
                assert torch.allclose(gates.gather(-1, order_ref), model_w.double().gather(-1, order_model),
                                      rtol=1e-5, atol=1e-7), f"layer row {row}: gates"
                ex = layer.experts
                for t in range(x.shape[0]):
                    for slot in range(K):
                        e = int(idx[t, slot])
                        gate, up = (ex.gate_up_proj[e] @ x[t]).chunk(2)
                        f = (ex.down_proj[e] @ (ex.act_fn(gate) * up)).double()
                        g = abs(float(gates[t, slot]))
                        n = float(f.norm())
                        acc["count"][cat, row, e] += 1
                        acc["gate_sum"][cat, row, e] += g
                        acc["norm_sum"][cat, row, e] += n
                        acc["gated_norm_sum"][cat, row, e] += g * n
                        acc["norm_max"][cat, row, e] = max(acc["norm_max"][cat, row, e], n)
                        acc["act_max"][cat, row, e] = max(acc["act_max"][cat, row, e], float(f.abs().max()))
    finally:
        for h in hooks:
            h.remove()
    return acc


def assert_stats_close(a: dict, b: dict, rel=1e-5):
    for k in SUM_STATS + MAX_STATS:
        scale = max(np.abs(b[k]).max(), 1e-12)
        err = np.abs(a[k] - b[k]).max() / scale
        assert err <= rel, f"{k}: relative error {err:.2e}"


@pytest.fixture
def tiny_scaled(tiny):
    """`tiny` with a varied `router.scale` (build_tiny_model leaves it at ones, where a gate missing the
    x scale factor would go unseen); the original values are put back afterwards."""
    gen = torch.Generator().manual_seed(7)
    saved = []
    for _, layer in tiny.adapter.moe_layers(tiny.model):
        saved.append((layer.router.scale, layer.router.scale.data))
        layer.router.scale.data = torch.rand(layer.router.scale.shape, generator=gen) * 1.5 + 0.25
    try:
        yield tiny
    finally:
        for param, data in saved:
            param.data = data


def test_observer_equals_brute_force(tiny_scaled, calib):
    tiny = tiny_scaled
    stats = observe(tiny, calib, batch_size=4)
    reference = brute_force_stats(tiny, calib)
    assert np.array_equal(stats.arrays["count"], reference["count"])
    assert_stats_close(stats.arrays, reference)
    # every valid token is routed to exactly top_k experts in every layer, padding never counted
    assert stats.arrays["count"].sum() == calib.num_tokens * tiny.top_k * stats.num_layers


def test_padding_and_batching_do_not_change_statistics(tiny, calib):
    batched = observe(tiny, calib, batch_size=5)     # uneven lengths -> lots of padding
    single = observe(tiny, calib, batch_size=1)      # no padding at all
    assert np.array_equal(batched.arrays["count"], single.arrays["count"])
    assert_stats_close(batched.arrays, single.arrays)


def test_observing_leaves_outputs_unchanged_and_does_not_leak(tiny, calib):
    ids = torch.tensor([calib.token_ids[0]])
    with torch.no_grad():
        before = tiny.model(ids).logits
    observe(tiny, calib, batch_size=4)
    with torch.no_grad():
        after = tiny.model(ids).logits
        recorded = []
        with tiny.adapter.observing(tiny.model, lambda *a: recorded.append(a[0])):
            during = tiny.model(ids).logits
    assert torch.equal(before, after)
    assert torch.allclose(before, during, atol=1e-6)
    assert len(recorded) == len(tiny.moe_layer_indices)   # inside the block: observed
    with torch.no_grad():
        tiny.model(ids)
    assert len(recorded) == len(tiny.moe_layer_indices)   # outside: nothing recorded


def test_top_tokens_are_real_calibration_text(tiny, calib):
    stats = observe(tiny, calib, batch_size=4)
    assert len(stats.top_tokens) == stats.num_layers and len(stats.top_tokens[0]) == stats.num_experts
    routed = stats.total("count") > 0
    for row in range(stats.num_layers):
        for e in range(stats.num_experts):
            items = stats.top_tokens[row][e]
            assert bool(items) == bool(routed[row, e])
            scores = [it["score"] for it in items]
            assert scores == sorted(scores, reverse=True)
            for it in items:
                assert it["category"] in calib.categories and it["token"]


def test_stats_roundtrip_and_mismatch(tiny, calib, tmp_path):
    stats = observe(tiny, calib, batch_size=4)
    path = stats.save(tmp_path / "s.npz")
    loaded = ExpertStats.load(path)
    for k in stats.arrays:
        assert np.array_equal(loaded.arrays[k], stats.arrays[k])
    assert loaded.top_tokens == stats.top_tokens and loaded.categories == stats.categories
    assert loaded.fingerprint() == calib.fingerprint()
    loaded.check_matches(tiny.moe_layer_indices, tiny.num_experts, tiny.top_k)
    from reap_core.errors import StatisticsError
    with pytest.raises(StatisticsError, match="experts"):
        loaded.check_matches(tiny.moe_layer_indices, tiny.num_experts * 2, tiny.top_k)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(StatisticsError, match="not a REAP Studio statistics file"):
        ExpertStats.load(bad)


def test_category_totals_add_up(tiny, calib):
    stats = observe(tiny, calib, batch_size=4)
    # Expected from the calibration set alone: a token of category c is routed to exactly top_k
    # experts in every MoE layer, so per layer category c counts top_k x (its tokens) routed pairs.
    tokens = {c: sum(len(ids) for ids, cid in zip(calib.token_ids, calib.category_ids) if calib.categories[cid] == c)
              for c in calib.categories}
    assert stats.tokens_per_category == [tokens[c] for c in stats.categories]
    for c in stats.categories:
        per_layer = stats.total("count", [c]).sum(axis=1)
        assert per_layer.tolist() == [tiny.top_k * tokens[c]] * stats.num_layers, c
    assert stats.total("count").sum(axis=1).tolist() == [tiny.top_k * calib.num_tokens] * stats.num_layers
