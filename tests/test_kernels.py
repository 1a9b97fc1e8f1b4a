"""The routed-only experts kernels (loop, gathered, grouped in chunks) equal a hand computation."""

import numpy as np
import pytest
import torch

from reap_core.adapters import kernels
from reap_core.observer import observe
from reap_core.tiny import build_tiny_model

from test_observer import assert_stats_close, brute_force_stats


@pytest.fixture(scope="module")
def experts():
    model = build_tiny_model("causal", vocab_size=64, hidden=48, layers=2, experts=12, top_k=3, expert_width=24)
    return model.model.layers[0].experts


@torch.no_grad()
def by_hand(experts, x, idx, w):
    """Every routed pair written out in float64: f = down_e (act(gate_e x) * up_e x); out = sum w f."""
    T, K = idx.shape
    out = torch.zeros(T, x.shape[1], dtype=torch.float64)
    pairs = {}
    for t in range(T):
        for k in range(K):
            e = int(idx[t, k])
            gate, up = (experts.gate_up_proj[e].double() @ x[t].double()).chunk(2)
            f = experts.down_proj[e].double() @ (experts.act_fn(gate) * up)
            out[t] += float(w[t, k]) * f
            pairs[(t, e)] = (float(f.norm()), float(f.abs().max()), float(w[t, k]))
    return out, pairs


@pytest.mark.parametrize("tokens", [3, 40])          # loop: 9 pairs hand over to grouped; 120 loop
@pytest.mark.parametrize("kernel", ["loop", "grouped_small_chunks", "grouped"])
def test_kernel_output_and_records_equal_the_hand_computation(experts, tokens, kernel):
    gen = torch.Generator().manual_seed(tokens)
    E, K, H = experts.num_experts, 3, experts.gate_up_proj.shape[2]
    x = torch.randn(tokens, H, generator=gen)
    idx = torch.stack([torch.randperm(E, generator=gen)[:K] for _ in range(tokens)])
    w = torch.rand(tokens, K, generator=gen)
    fn = {"loop": kernels.loop_experts_forward, "grouped": kernels.grouped_experts_forward,
          "grouped_small_chunks": lambda *a, **k: kernels.grouped_experts_forward(*a, **k, chunk_bytes=4000)}[kernel]
    seen = []
    with torch.no_grad():
        out = fn(experts, x, idx, w, 5, lambda *a: seen.append(a))
    expected, pairs = by_hand(experts, x, idx, w)
    assert torch.allclose(out.double(), expected, rtol=1e-4, atol=1e-5)
    (layer, e_ids, t_ids, gates, norms, absmax), = seen
    assert layer == 5 and len(e_ids) == tokens * K and e_ids.tolist() == sorted(e_ids.tolist())
    got = {(int(t), int(e)): (float(n), float(a), float(g)) for e, t, g, n, a in zip(e_ids, t_ids, gates, norms, absmax)}
    assert got.keys() == pairs.keys()
    for key, ref in pairs.items():
        assert np.allclose(got[key], ref, rtol=1e-4, atol=1e-6), key


def test_every_observer_kernel_gives_the_brute_force_statistics(tiny, calib, monkeypatch):
    reference = brute_force_stats(tiny, calib)
    for name in kernels.KERNELS:
        monkeypatch.setenv("REAP_OBSERVER_KERNEL", name)
        stats = observe(tiny, calib, batch_size=4)
        assert np.array_equal(stats.arrays["count"], reference["count"]), name
        assert_stats_close(stats.arrays, reference)


def test_kernel_choice_per_device(monkeypatch):
    monkeypatch.delenv("REAP_OBSERVER_KERNEL", raising=False)
    assert kernels.observer_kernel_name("cpu") == "loop"
    assert kernels.observer_kernel_name("cuda", torch.bfloat16) == "grouped"
    assert kernels.observer_kernel_name("cuda", torch.float32) == "loop"
    monkeypatch.setenv("REAP_OBSERVER_KERNEL", "nope")
    with pytest.raises(ValueError, match="loop, grouped"):
        kernels.observer_kernel_name("cpu")


def test_grouped_kernel_takes_bfloat16_gates():
    """Qwen3-style routers hand bf16 weights to the experts (Gemma 4's are float32); the grouped kernel
    (what a GPU runs in bf16) must combine them like transformers' grouped_mm (found on the H200)."""
    from reap_core.adapters.kernels import grouped_experts_forward
    from reap_core.tiny import build_tiny_family

    model = build_tiny_family("qwen3_moe", dtype=torch.bfloat16)
    experts = model.model.layers[0].mlp.experts
    hidden = torch.randn(40, model.config.hidden_size, dtype=torch.bfloat16)
    _, weights, index = model.model.layers[0].mlp.gate(hidden)
    assert weights.dtype == torch.bfloat16
    model.set_experts_implementation("grouped_mm")
    with torch.no_grad():
        expected = experts(hidden, index, weights)
        got = grouped_experts_forward(experts, hidden, index, weights)
    assert got.dtype == expected.dtype and torch.equal(got, expected)
