"""Expert merging (merge_signals, merge_plan, merging): the signals, the clusterings, the merged view and
its export, checked against quantities computed here independently of the code under test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from reap_core.errors import InvalidPlan
from reap_core.merge_plan import MERGE_METHODS, average_linkage, plan_merge
from reap_core.merge_signals import collect_merge_signals
from reap_core.merging import align_permutation, build_merged, compressed_rows, compressed_view, neuron_features
from reap_core.model import wrap_model
from reap_core.observer import observe
from reap_core.tiny import TINY_FAMILY_CONFIGS, build_tiny_family, build_tiny_model


@pytest.fixture(scope="module")
def gemma(tokenizer, calib):
    loaded = wrap_model(build_tiny_model("causal", seed=5, vocab_size=len(tokenizer)), tokenizer, model_id="tiny-merge")
    return loaded, observe(loaded, calib), collect_merge_signals(loaded, calib)


def _gemma_expert(experts, e: int, x: torch.Tensor) -> torch.Tensor:
    """Gemma 4's expert e written out by hand: gelu_tanh(gate) * up, then down."""
    gate, up = F.linear(x, experts.gate_up_proj[e]).chunk(2, dim=-1)
    return F.linear(F.gelu(gate, approximate="tanh") * up, experts.down_proj[e])


def test_signals_match_a_hand_computation(gemma, calib):
    loaded, stats, signals = gemma
    # independently: capture what each MoE layer's experts module receives, run the routed experts by hand
    layers = loaded.adapter.moe_layers(loaded.model)
    seen = {}
    hooks = [loaded.adapter.experts(layer).register_forward_hook(
        lambda mod, args, out, row=row: seen.setdefault(row, []).append((args[0], args[1])))
        for row, (_, layer) in enumerate(layers)]
    ids = torch.tensor([calib.token_ids[0]])
    try:
        with torch.no_grad():
            loaded.model(input_ids=ids)
    finally:
        for h in hooks:
            h.remove()
    from reap_core.calibration import CalibrationSet
    one = CalibrationSet(spec="one", token_ids=[calib.token_ids[0]], category_ids=[0], categories=["x"], max_tokens=80)
    got = collect_merge_signals(loaded, one)
    for row, (_, layer) in enumerate(layers):
        experts = loaded.adapter.experts(layer)
        hidden, top = seen[row][0]
        expected = torch.zeros(loaded.num_experts, hidden.shape[-1], dtype=torch.float64)
        counts = torch.zeros(loaded.num_experts, dtype=torch.float64)
        with torch.no_grad():
            for t in range(hidden.shape[0]):
                for e in top[t].tolist():
                    expected[e] += _gemma_expert(experts, e, hidden[t]).double()
                    counts[e] += 1
        assert np.allclose(got.out_sum[row], expected.numpy(), rtol=1e-4, atol=1e-5)
        assert np.array_equal(got.count[row], counts.numpy())
    # the whole calibration: the routed counts are REAP's counts
    assert np.array_equal(signals.count, stats.total("count"))


def test_logit_similarity_is_the_correlation_of_router_logits(gemma, calib):
    loaded, _, signals = gemma
    from reap_core.calibration import iter_batches
    rows = {}
    layers = loaded.adapter.moe_layers(loaded.model)
    hooks = [layer.router.proj.register_forward_hook(lambda m, a, out, row=row: rows.setdefault(row, []).append(out))
             for row, (_, layer) in enumerate(layers)]
    masks = []
    try:
        with torch.no_grad():
            for batch in iter_batches(calib, 4, 0):
                loaded.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
                masks.append(batch.attention_mask.reshape(-1).bool())
    finally:
        for h in hooks:
            h.remove()
    valid = torch.cat(masks)
    for row in rows:
        logits = torch.cat([o.reshape(-1, loaded.num_experts) for o in rows[row]])[valid].double().numpy()
        assert np.allclose(signals.logit_similarity()[row], np.corrcoef(logits.T), atol=1e-8)


def test_average_linkage_equals_scipy():
    from scipy.cluster.hierarchy import fcluster, linkage
    rng = np.random.default_rng(0)
    for n, k in [(16, 8), (32, 5), (12, 11)]:
        x = rng.normal(size=(n, 6))
        ours = sorted(tuple(c) for c in average_linkage(x, k))
        labels = fcluster(linkage(x, method="average", metric="euclidean"), k, criterion="maxclust")
        theirs = sorted(tuple(np.flatnonzero(labels == lab).tolist()) for lab in set(labels))
        assert ours == theirs


@pytest.mark.parametrize("method", sorted(MERGE_METHODS))
def test_plans_partition_the_experts_with_weights_summing_to_one(gemma, method):
    loaded, stats, signals = gemma
    for ratio in (0.25, 0.5):
        plan = plan_merge(stats, signals, method, ratio)
        n_keep = loaded.num_experts - int(loaded.num_experts * ratio)
        for kept, members, weights in zip(plan.pruning.kept, plan.members, plan.weights):
            assert len(kept) == n_keep and list(kept) == sorted(kept)
            assert sorted(e for m in members for e in m) == list(range(loaded.num_experts))
            assert all(rep in m for rep, m in zip(kept, members))
            assert all(abs(sum(w) - 1) < 1e-12 and min(w) >= 0 for w in weights)
    count = stats.total("count")
    if method == "m-smoe":   # the dominant experts are the most used ones
        for row, kept in enumerate(plan.pruning.kept):
            top = set(np.argsort(-count[row], kind="stable")[:len(kept)].tolist())
            assert set(kept) == top or np.isclose(sorted(count[row])[-len(kept)], sorted(count[row])[-len(kept) - 1])


def test_bad_ratio_and_method_are_refused(gemma):
    loaded, stats, signals = gemma
    with pytest.raises(InvalidPlan, match="fewer than the"):
        plan_merge(stats, signals, "ream", 0.95)
    with pytest.raises(InvalidPlan, match="unknown merge method"):
        plan_merge(stats, signals, "average-everything", 0.5)


def _copy_expert(experts, src: int, dst: int, perm: torch.Tensor | None = None) -> None:
    """Make expert dst a copy of src, its intermediate neurons permuted by perm (the same function)."""
    with torch.no_grad():
        up, down = experts.gate_up_proj[src].clone(), experts.down_proj[src].clone()
        if perm is not None:
            width = down.shape[-1]
            up = torch.cat([up[:width][perm], up[width:][perm]])
            down = down[:, perm]
        experts.gate_up_proj[dst] = up
        experts.down_proj[dst] = down


def test_merging_identical_experts_gives_the_same_expert(tokenizer, calib):
    loaded = wrap_model(build_tiny_model("causal", seed=9, vocab_size=len(tokenizer)), tokenizer, model_id="tiny-copies")
    layer = loaded.adapter.moe_layers(loaded.model)[0][1]
    experts = loaded.adapter.experts(layer)
    width = experts.down_proj.shape[-1]
    perm = torch.randperm(width, generator=torch.Generator().manual_seed(1))
    _copy_expert(experts, 0, 1, perm)            # expert 1 = expert 0 with shuffled neurons
    _copy_expert(experts, 0, 2)                  # expert 2 = expert 0 exactly
    x = torch.randn(7, experts.gate_up_proj.shape[-1])
    assert torch.allclose(_gemma_expert(experts, 1, x), _gemma_expert(experts, 0, x), atol=1e-5)
    stats, signals = observe(loaded, calib), collect_merge_signals(loaded, calib)
    plan = plan_merge(stats, signals, "hc-smoe", 0.25)
    # layer 0 by hand: 0, 1, 2 in one cluster with uneven weights, then {3, 4}, {5, 6}, the rest alone (12 of 16)
    from dataclasses import replace
    layer0 = [((0, 1, 2), (0.5, 0.3, 0.2)), ((3, 4), (0.5, 0.5)), ((5, 6), (0.5, 0.5))]
    layer0 += [((e,), (1.0,)) for e in range(7, 16)]
    kept = (tuple(m[0] for m, _ in layer0),) + plan.pruning.kept[1:]
    members = (tuple(m for m, _ in layer0),) + plan.members[1:]
    weights = (tuple(w for _, w in layer0),) + plan.weights[1:]
    for align, close in ((True, True), (False, False)):
        custom = replace(plan, pruning=replace(plan.pruning, kept=kept), members=members, weights=weights, align=align)
        merged = build_merged(loaded, custom)
        slot = kept[0].index(0)
        with torch.no_grad():
            out = _gemma_expert(merged.proxies[0], slot, x)
        assert torch.allclose(out, _gemma_expert(experts, 0, x), atol=1e-5) == close
    # alignment recovers the permutation itself
    found = align_permutation(neuron_features(experts, 0, False), neuron_features(experts, 1, False))
    assert torch.equal(perm[found], torch.arange(width)) or torch.equal(found, torch.argsort(perm))


def test_rows_of_one_batch_see_their_own_model(gemma, calib):
    loaded, stats, signals = gemma
    merged = build_merged(loaded, plan_merge(stats, signals, "ream", 0.5))
    pruned = plan_merge(stats, signals, "ream", 0.5).pruning
    ids = torch.tensor([calib.token_ids[1][:24]])
    with torch.no_grad():
        alone = {}
        for name, view in (("original", None), ("merged", merged), ("pruned", pruned)):
            with compressed_view(loaded, view):
                alone[name] = loaded.model(input_ids=ids).logits[0]
        with compressed_rows(loaded, [None, merged, pruned]):
            rows = loaded.model(input_ids=ids.repeat(3, 1)).logits
    assert torch.allclose(rows[0], alone["original"], atol=1e-5)
    assert torch.allclose(rows[1], alone["merged"], atol=1e-5)
    assert torch.allclose(rows[2], alone["pruned"], atol=1e-5)
    assert not torch.allclose(alone["merged"], alone["pruned"], atol=1e-3)   # merging changed the experts
    with torch.no_grad():   # and nothing on the model changed
        assert torch.equal(loaded.model(input_ids=ids).logits[0], alone["original"])


@pytest.mark.parametrize("family", sorted(TINY_FAMILY_CONFIGS) + ["gemma4-multimodal"])
def test_every_family_merges(family, tokenizer, calib):
    model = (build_tiny_model("multimodal", vocab_size=len(tokenizer)) if family == "gemma4-multimodal"
             else build_tiny_family(family, vocab_size=len(tokenizer)))
    loaded = wrap_model(model, tokenizer, model_id=family)
    stats, signals = observe(loaded, calib), collect_merge_signals(loaded, calib)
    ids = torch.tensor([calib.token_ids[0][:20]])
    for method in MERGE_METHODS:
        plan = plan_merge(stats, signals, method, 0.5)
        groups, _ = stats.expert_groups
        size = loaded.num_experts // groups
        assert all(len({e // size for e in m}) == 1 for row in plan.members for m in row)   # within one group
        merged = build_merged(loaded, plan)
        assert merged.nbytes > 0
        with torch.no_grad(), compressed_view(loaded, merged):
            logits = loaded.model(input_ids=ids).logits
        assert torch.isfinite(logits).all()


@pytest.mark.parametrize("family", ["gemma4-causal", "gemma4-multimodal", "qwen3_moe", "gpt_oss"])
def test_merged_export_reloads_as_the_merged_model(family, tokenizer, calib, tmp_path):
    import json

    from transformers import AutoModelForCausalLM

    from reap_core.export import export_merged
    from reap_core.model import load_model
    model = (build_tiny_model(family.split("-")[1], vocab_size=len(tokenizer)) if family.startswith("gemma4")
             else build_tiny_family(family, vocab_size=len(tokenizer)))
    model.save_pretrained(tmp_path / "src")
    tokenizer.save_pretrained(tmp_path / "src")
    loaded = load_model(str(tmp_path / "src"))
    stats, signals = observe(loaded, calib), collect_merge_signals(loaded, calib)
    merged = build_merged(loaded, plan_merge(stats, signals, "m-smoe", 0.5))
    result = export_merged(loaded, merged, stats, tmp_path / "merged")
    assert result.max_abs_diff <= 1e-5
    # independently of the exporter's own check: reload, compare with the merged view and with the plain prune
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    ids = torch.tensor([calib.token_ids[2][:30]])
    with torch.no_grad():
        got = reloaded(input_ids=ids).logits
        with compressed_view(loaded, merged):
            want = loaded.model(input_ids=ids).logits
        with compressed_view(loaded, merged.plan.pruning):
            pruned = loaded.model(input_ids=ids).logits
    assert (got - want).abs().max() <= 1e-5
    assert (got - pruned).abs().max() > 1e-3
    assert loaded.adapter.num_experts(reloaded.config) == merged.plan.pruning.num_kept
    recipe = json.loads((tmp_path / "merged" / "reap_recipe.json").read_text())
    layer0 = recipe["merge"]["layers"][0]["clusters"]
    assert [c["members"] for c in layer0] == [list(m) for m in merged.plan.members[0]]
    assert recipe["merge"]["method"] == "m-smoe" and "merge --model" in recipe["redo"][1]
    assert "merged into" in (tmp_path / "merged" / "README.md").read_text()


def test_reports_take_a_merged_model(gemma, calib):
    """Generation quality and task accuracy run the merged model like a prune, labelled as a merge."""
    from reap_core.card import card_eval_results
    from reap_core.generation_quality import generation_quality
    loaded, stats, signals = gemma
    merged = build_merged(loaded, plan_merge(stats, signals, "hc-smoe", 0.5))
    report = generation_quality(loaded, merged, prompts=[("chat", "hello"), ("chat", "2 + 2 =")], max_new_tokens=6,
                                batch_size=2)
    assert report.plan["criterion"] == "merge:hc-smoe" and report.plan["experts_kept"] == 8
    from reap_core.greedy import generate_greedy
    with compressed_view(loaded, merged):   # independently: the merged model's own greedy answers
        mine = generate_greedy(loaded.model, loaded.tokenizer, [[{"role": "user", "content": "hello"}],
                                                                [{"role": "user", "content": "2 + 2 ="}]], 6, 2, False)
    assert [s["pruned"] for s in report.samples] == [a.text for a in mine]
    assert [s["pruned"] for s in report.samples] != [s["original"] for s in report.samples]
    rows = card_eval_results(merged.plan.as_pruning_plan(), generation=report)
    assert "Merged" in rows["Generation: loop rate"] and rows["_description"].startswith("Merged = 16 experts")


def test_fidelity_sweep_takes_merge_methods(gemma, tokenizer):
    from reap_core.fidelity import measure_fidelity, run_fidelity_sweep
    from reap_core.heldout import build_heldout
    loaded, stats, signals = gemma
    heldout = build_heldout("toy", tokenizer, max_tokens=48)
    result = run_fidelity_sweep(loaded, stats, heldout, ratios=[0, 0.5], criteria=["reap"], merges=["ream"],
                                signals=signals)
    assert result.criteria == ["reap", "merge:ream"]
    merged_point, reap_point = result.point("merge:ream", 0.5), result.point("reap", 0.5)
    assert result.point("merge:ream", 0).kl == 0 and merged_point.experts_kept == 8
    # the same merge measured on its own gives the same numbers; and it is not the prune's
    alone, _ = measure_fidelity(loaded, heldout, [build_merged(loaded, plan_merge(stats, signals, "ream", 0.5))])
    assert abs(alone[0]["kl"] - merged_point.kl) < 1e-6 and abs(merged_point.kl - reap_point.kl) > 1e-6
    assert "REAM merge" in result.format_table("kl")
    with pytest.raises(InvalidPlan, match="merge signals"):
        run_fidelity_sweep(loaded, stats, heldout, ratios=[0.5], criteria=["reap"], merges=["ream"])
