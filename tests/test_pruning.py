"""Selection arithmetic, the masked view (== physical slicing), and thread isolation of masks."""

import threading

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from reap_core.errors import InvalidPlan
from reap_core.masking import masked_view
from reap_core.observer import observe
from reap_core.plan import PruningPlan, check_ratio, make_plan, plan_from_scores
from reap_core.prune import PLAN_FILE, SCORES_FILE, save_pruned
from reap_core.saliency import CRITERIA, compute_scores, super_experts


@pytest.mark.parametrize("ratio,kept", [(0.2, 103), (0.3, 90), (0.5, 64), (0.9375, 8)])
def test_selection_counts_for_128_experts(ratio, kept):
    scores = np.random.default_rng(0).random((30, 128))
    plan = plan_from_scores(scores, ratio, top_k=8, layer_indices=list(range(30)))
    assert plan.num_kept == kept and all(len(k) == kept for k in plan.kept)
    # the pruned experts are exactly the lowest-scoring ones
    for row in range(30):
        worst = set(np.argsort(scores[row], kind="stable")[:128 - kept].tolist())
        assert set(plan.pruned(row)) == worst


def test_floor_is_robust_to_float_error():
    assert check_ratio(0.29, 100, 8) == 29     # 100 * 0.29 = 28.999999999999996
    assert check_ratio(0.2, 128, 8) == 25


@pytest.mark.parametrize("ratio", [0, 0.0, -0.1, 1, 1.5, float("nan"), "abc"])
def test_bad_ratios_are_refused(ratio):
    with pytest.raises(InvalidPlan, match="ratio"):
        check_ratio(ratio, 128, 8)


def test_top_k_guard():
    with pytest.raises(InvalidPlan, match="fewer than the 8"):
        check_ratio(0.95, 128, 8)                # 122 pruned -> 6 kept < 8
    assert check_ratio(0.9375, 128, 8) == 120    # exactly 8 kept is allowed


def test_protection_keeps_super_experts_for_every_criterion(tiny, calib):
    stats = observe(tiny, calib, batch_size=4)
    # make expert 3 of every layer a "super expert" with a huge activation
    stats.arrays["act_max"][:, :, 3] = stats.arrays["act_max"].max() * 100
    protected = super_experts(stats)
    assert protected[:, 3].all()
    for criterion in CRITERIA:
        plan = make_plan(stats, 0.5, criterion, protect_super_experts=True)
        assert all(3 in kept for kept in plan.kept), criterion
        assert all(3 in p for p in plan.protected)
    # too many protected experts for the ratio: a clear error, not a silent violation
    stats.arrays["act_max"][:] = 1.0
    stats.arrays["act_max"][:, :, :5] = 1e6          # 5 super experts; ratio 0.75 keeps only 4
    with pytest.raises(InvalidPlan, match="protected"):
        make_plan(stats, 0.75, "reap", protect_super_experts=True)


def test_criteria_definitions(tiny, calib):
    stats = observe(tiny, calib, batch_size=4)
    count, gsum, nsum, gnsum = (stats.total(k) for k in ("count", "gate_sum", "norm_sum", "gated_norm_sum"))
    reap = compute_scores(stats, "reap")
    routed = count > 0
    assert np.allclose(reap[routed], gnsum[routed] / count[routed]) and (reap[~routed] == 0).all()
    assert np.allclose(compute_scores(stats, "weighted_ean_sum"), count * reap)
    assert np.array_equal(compute_scores(stats, "frequency"), count)
    assert np.array_equal(compute_scores(stats, "weighted_frequency"), gsum)
    assert np.array_equal(compute_scores(stats, "ean_sum"), nsum)
    assert np.array_equal(compute_scores(stats, "random", seed=1), compute_scores(stats, "random", seed=1))
    assert not np.array_equal(compute_scores(stats, "random", seed=1), compute_scores(stats, "random", seed=2))
    with pytest.raises(InvalidPlan, match="unknown criterion 'nope'.*reap"):
        compute_scores(stats, "nope")


def test_plan_json_roundtrip(tiny, calib):
    plan = make_plan(observe(tiny, calib, batch_size=4), 0.25, "frequency")
    assert PruningPlan.from_dict(plan.to_dict()) == plan


def test_masked_view_equals_sliced_and_reloaded_model(tiny, calib, tmp_path):
    stats = observe(tiny, calib, batch_size=4)
    plan = make_plan(stats, 0.5, "reap")
    ids = torch.tensor([calib.token_ids[0][:40]])
    with torch.no_grad():
        original = tiny.model(ids).logits
        with masked_view(tiny, plan):
            masked = tiny.model(ids).logits
            masked_gen = tiny.model.generate(ids, max_new_tokens=12, do_sample=False)
        after = tiny.model(ids).logits
    assert torch.equal(original, after)                    # the mask did not outlive the block
    assert (original - masked).abs().max() > 1e-3          # and it really changed something

    out = save_pruned(tiny, plan, stats, tmp_path / "pruned")
    assert (out / SCORES_FILE).exists() and (out / PLAN_FILE).exists()
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(reloaded).__name__ == type(tiny.model).__name__
    assert tiny.adapter.num_experts(reloaded.config) == plan.num_kept
    with torch.no_grad():
        sliced = reloaded(ids).logits
        sliced_gen = reloaded.generate(ids, max_new_tokens=12, do_sample=False)
    assert (sliced - masked).abs().max().item() <= 1e-5
    assert torch.equal(sliced_gen, masked_gen)
    # the in-memory model was not touched by the export
    assert tiny.num_experts == plan.num_experts


def test_scores_document(tiny, calib, tmp_path):
    import json
    stats = observe(tiny, calib, batch_size=4)
    plan = make_plan(stats, 0.25, "reap")
    doc = json.loads((save_pruned(tiny, plan, stats, tmp_path / "p") / SCORES_FILE).read_text())
    assert doc["criterion"] == "reap" and doc["compression_ratio"] == 0.25 and doc["top_k"] == tiny.top_k
    assert doc["num_experts"] == tiny.num_experts and len(doc["layers"]) == len(tiny.moe_layer_indices)
    layer = doc["layers"][0]
    assert set(layer["scores"]) == set(CRITERIA) and len(layer["scores"]["reap"]) == tiny.num_experts
    assert sorted(layer["kept"] + layer["pruned"]) == list(range(tiny.num_experts))
    assert doc["calibration"]["fingerprint"] == calib.fingerprint()


def test_two_threads_with_different_masks_do_not_interfere(tiny, calib):
    stats = observe(tiny, calib, batch_size=4)
    plans = {"a": make_plan(stats, 0.25, "reap"), "b": make_plan(stats, 0.75, "frequency"), "none": None}
    ids = torch.tensor([calib.token_ids[1][:30]])

    def run(plan):
        with torch.no_grad(), masked_view(tiny, plan):
            return tiny.model.generate(ids, max_new_tokens=10, do_sample=False), tiny.model(ids).logits

    alone = {k: run(p) for k, p in plans.items()}
    assert not torch.equal(alone["a"][1], alone["b"][1])
    results, errors = {}, []
    barrier = threading.Barrier(len(plans))

    def worker(key):
        try:
            barrier.wait()
            results[key] = [run(plans[key]) for _ in range(4)]
        except Exception as exc:  # pragma: no cover - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in plans]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for key, runs in results.items():
        for gen, logits in runs:
            assert torch.equal(gen, alone[key][0]), key
            assert torch.allclose(logits, alone[key][1], atol=1e-6), key


def test_plan_for_another_model_is_refused(tiny):
    plan = plan_from_scores(np.zeros((2, 8)), 0.25, top_k=2, layer_indices=[0, 1])
    with pytest.raises(InvalidPlan, match="this plan is for"):
        with masked_view(tiny, plan):
            pass
