"""The observer measures exactly what REAP defines, from routed tokens only, without changing the model."""

import numpy as np
import pytest
import torch

from reap_core.observer import observe
from reap_core.stats import MAX_STATS, SUM_STATS, ExpertStats


@torch.no_grad()
def brute_force_stats(loaded, calib):
    """Recompute every statistic by hand: one sample at a time, each routed expert run explicitly."""
    adapter, model = loaded.adapter, loaded.model
    layers = adapter.moe_layers(model)
    L, E, C = len(layers), loaded.num_experts, len(calib.categories)
    acc = {k: np.zeros((C, L, E)) for k in SUM_STATS + MAX_STATS}
    captured = {}
    hooks = [layer.experts.register_forward_pre_hook(
        lambda mod, args, row=row: captured.__setitem__(row, [a.detach().clone() for a in args]))
        for row, (_, layer) in enumerate(layers)]
    try:
        for ids, cat in zip(calib.token_ids, calib.category_ids):
            model.model(input_ids=torch.tensor([ids]), use_cache=False)
            for row, (_, layer) in enumerate(layers):
                x, idx, w = captured[row]
                ex = layer.experts
                for t in range(x.shape[0]):
                    for slot in range(idx.shape[1]):
                        e = int(idx[t, slot])
                        gate, up = (ex.gate_up_proj[e] @ x[t]).chunk(2)
                        f = (ex.down_proj[e] @ (ex.act_fn(gate) * up)).double()
                        g = abs(float(w[t, slot]))
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


def test_observer_equals_brute_force(tiny, calib):
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
    per_cat = sum(stats.total("count", [c]) for c in stats.categories)
    assert np.array_equal(per_cat, stats.total("count"))
    assert sum(stats.tokens_per_category) == calib.num_tokens
