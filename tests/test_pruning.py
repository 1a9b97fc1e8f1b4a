"""Selection arithmetic, the masked view (== physical slicing), and thread isolation of masks."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import run_at_once
from reap_core.errors import InvalidPlan
from reap_core.masking import masked_view
from reap_core.observer import observe
from reap_core.plan import PruningPlan, check_ratio, make_plan, plan_from_scores
from reap_core.prune import PLAN_FILE, SCORES_FILE, save_pruned
from reap_core.saliency import CRITERIA, compute_scores, super_experts
from reap_core.stats import ExpertStats


@pytest.mark.parametrize("ratio,kept", [(0.2, 103), (0.3, 90), (0.5, 64), (0.9375, 8)])
def test_selection_counts_for_128_experts(ratio, kept):
    # kept = 128 - floor(128 * ratio): 128 - 25, 128 - 38, 128 - 64, 128 - 120
    scores = np.random.default_rng(0).random((30, 128))     # distinct values: no ties
    plan = plan_from_scores(scores, ratio, top_k=8, layer_indices=list(range(30)))
    assert plan.num_kept == kept and all(len(k) == kept for k in plan.kept)
    # "the lowest-scoring are pruned": every pruned expert scores below every kept one
    for row in range(30):
        pruned, kept_ids = list(plan.pruned(row)), list(plan.kept[row])
        assert len(pruned) == 128 - kept and sorted(pruned + kept_ids) == list(range(128))
        assert scores[row, pruned].max() < scores[row, kept_ids].min()


def test_selection_worked_example_with_ties():
    # expert:   0    1    2    3    4    5    6    7
    scores = [[0.5, 0.1, 0.3, 0.1, 0.9, 0.2, 0.7, 0.3],
              [4.0, 4.0, 4.0, 4.0, 1.0, 1.0, 1.0, 1.0]]
    # ratio 0.5 of 8 -> prune 4 per layer. Layer 0, ascending: 0.1 (1, 3), 0.2 (5), then 0.3 is tied
    # between experts 2 and 7: the lower id goes first, so 2 is pruned and 7 kept.
    # Layer 1: the four 1.0s (4..7) are pruned; no tie at the boundary.
    plan = plan_from_scores(np.array(scores), 0.5, top_k=2, layer_indices=[3, 5])
    assert plan.kept == ((0, 4, 6, 7), (0, 1, 2, 3))
    assert plan.pruned(0) == (1, 2, 3, 5) and plan.pruned(1) == (4, 5, 6, 7)
    assert plan.layer_indices == (3, 5)
    # 0.25 -> floor(2) = 2 pruned: experts 1 and 3 (the two 0.1s); in layer 1 the tie is among
    # the four 1.0s, and the two lowest ids (4, 5) go
    plan = plan_from_scores(np.array(scores), 0.25, top_k=2, layer_indices=[3, 5])
    assert plan.pruned(0) == (1, 3) and plan.pruned(1) == (4, 5)


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


def _worked_stats() -> ExpertStats:
    """One layer, three experts, top-1, two categories; the routed pairs (category, expert, gate, ||f||, max|f|):
        a, 0, 0.50, 2.0, 0.9      b, 0, 1.00, 2.0, 3.0      a, 1, 0.50, 4.0, 0.4
        a, 0, 0.25, 4.0, 0.6      b, 0, 0.50, 4.0, 1.2
    and expert 2 never routed. gate x ||f||: expert 0 gives 1.0, 1.0 (a) and 2.0, 2.0 (b); expert 1 gives 2.0."""
    def arr(a, b):   # [C=2 (a, b), L=1, E=3]
        return np.array([[a], [b]], dtype=np.float64)

    arrays = {
        "count": arr([2, 1, 0], [2, 0, 0]),
        "gate_sum": arr([0.75, 0.5, 0], [1.5, 0, 0]),
        "norm_sum": arr([6.0, 4.0, 0], [6.0, 0, 0]),
        "gated_norm_sum": arr([2.0, 2.0, 0], [4.0, 0, 0]),
        "norm_max": arr([4.0, 4.0, 0], [4.0, 0, 0]),
        "act_max": arr([0.9, 0.4, 0], [3.0, 0, 0]),
    }
    return ExpertStats(model_id="worked", layer_indices=[0], num_experts=3, top_k=1, categories=["a", "b"],
                       arrays=arrays, tokens_per_category=[3, 2])


WORKED_SCORES = [
    ("reap", [1.5, 2.0, 0.0]),                   # (1 + 1 + 2 + 2) / 4 pairs; 2.0 / 1; never routed -> 0
    ("weighted_ean_sum", [6.0, 2.0, 0.0]),       # 1 + 1 + 2 + 2; 2.0
    ("frequency", [4.0, 1.0, 0.0]),
    ("ean_sum", [12.0, 4.0, 0.0]),               # 2 + 4 + 2 + 4; 4
    ("ean_mean", [3.0, 4.0, 0.0]),               # 12 / 4; 4 / 1
    ("weighted_frequency", [2.25, 0.5, 0.0]),    # 0.5 + 0.25 + 1.0 + 0.5; 0.5
    ("max_activation", [3.0, 0.4, 0.0]),
]


@pytest.mark.parametrize("criterion,expected", WORKED_SCORES)
def test_criteria_on_a_worked_example(criterion, expected):
    assert compute_scores(_worked_stats(), criterion).tolist() == [pytest.approx(expected)]


def test_every_data_driven_criterion_has_a_worked_example():
    assert {name for name, _ in WORKED_SCORES} == set(CRITERIA) - {"random"}


def test_criteria_from_chosen_categories_and_the_plans_they_give():
    stats = _worked_stats()
    assert compute_scores(stats, "reap", ["a"]).tolist() == [pytest.approx([1.0, 2.0, 0.0])]   # (1 + 1) / 2
    assert compute_scores(stats, "reap", ["b"]).tolist() == [pytest.approx([2.0, 0.0, 0.0])]   # (2 + 2) / 2
    assert compute_scores(stats, "frequency", ["b"]).tolist() == [pytest.approx([2.0, 0.0, 0.0])]
    assert compute_scores(stats, "max_activation", ["a"]).tolist() == [pytest.approx([0.9, 0.4, 0.0])]
    # ratio 2/3 of 3 experts prunes floor(2.01) = 2, keeps 1: REAP keeps expert 1 (2.0 > 1.5),
    # frequency keeps expert 0 (4 > 1), and REAP from category b alone keeps expert 0 (2.0 > 0)
    assert make_plan(stats, 0.67, "reap").kept == ((1,),)
    assert make_plan(stats, 0.67, "frequency").kept == ((0,),)
    assert make_plan(stats, 0.67, "reap", categories=["b"]).kept == ((0,),)


def test_random_criterion_and_unknown_names():
    stats = _worked_stats()
    assert np.array_equal(compute_scores(stats, "random", seed=1), compute_scores(stats, "random", seed=1))
    assert not np.array_equal(compute_scores(stats, "random", seed=1), compute_scores(stats, "random", seed=2))
    assert compute_scores(stats, "random", seed=1).shape == (stats.num_layers, stats.num_experts)
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
    results = run_at_once({k: (lambda p=p: run(p)) for k, p in plans.items()}, repeats=4)
    for key, runs in results.items():
        for gen, logits in runs:
            assert torch.equal(gen, alone[key][0]), key
            assert torch.allclose(logits, alone[key][1], atol=1e-6), key


def test_plan_for_another_model_is_refused(tiny):
    plan = plan_from_scores(np.zeros((2, 8)), 0.25, top_k=2, layer_indices=[0, 1])
    with pytest.raises(InvalidPlan, match="this plan is for"):
        with masked_view(tiny, plan):
            pass
