"""Evaluation: fidelity metrics and sweep, loop/collapse detection, answer extraction, reports."""

import json
import math

import pytest
import torch

from reap_core import evaluate as ev
from reap_core import gemma_bench, task_eval, toy_tasks
from reap_core.calibration import Sample, tokenize_samples
from reap_core.errors import InvalidPlan
from reap_core.masking import masked_view
from reap_core.model import wrap_model
from reap_core.observer import observe
from reap_core.plan import PruningPlan, make_plan
from reap_core.tiny import build_tiny_model

RATIOS = (0.0, 0.25, 0.5, 0.75)   # tiny models: 16 experts, top-4 -> at most 0.75


@pytest.fixture(scope="module")
def tiny_stats(tiny, calib):
    return observe(tiny, calib, batch_size=4, top_tokens_per_expert=0)


@pytest.fixture(scope="module")
def causal(tokenizer):
    """One class is enough where the model class does not matter (the sweep runs on both)."""
    return wrap_model(build_tiny_model("causal", vocab_size=len(tokenizer)), tokenizer, model_id="tiny-causal")


@pytest.fixture(scope="module")
def causal_stats(causal, calib):
    return observe(causal, calib, batch_size=4, top_tokens_per_expert=0)


@pytest.fixture(scope="module")
def heldout(tokenizer):
    return ev.build_heldout("toy:2", tokenizer, max_tokens=160)


# --- metrics on constructed cases -------------------------------------------------------------

def test_compare_identical_and_known_kl():
    ref = torch.randn(7, 11).log_softmax(-1)
    targets = torch.randint(0, 11, (7,))
    same = ev.compare_log_probs(ref, ref.clone(), targets)
    assert same["kl"] == pytest.approx(0.0, abs=1e-6) and same["agree"] == 7
    assert same["nll_ref"] == pytest.approx(same["nll_test"])
    p, q = torch.tensor([[0.4, 0.6]]), torch.tensor([[0.9, 0.1]])
    known = ev.compare_log_probs(p.log(), q.log(), torch.tensor([1]))
    assert known["kl"] == pytest.approx(0.4 * math.log(0.4 / 0.9) + 0.6 * math.log(0.6 / 0.1), rel=1e-5)
    assert known["agree"] == 0
    assert known["nll_test"] - known["nll_ref"] == pytest.approx(math.log(0.6 / 0.1), rel=1e-5)


def test_a_plan_that_keeps_every_expert_equals_the_original(causal, heldout):
    keep_all = PruningPlan(criterion="none", compression_ratio=0.0, num_experts=causal.num_experts, top_k=causal.top_k,
                           layer_indices=tuple(causal.moe_layer_indices),
                           kept=tuple(tuple(range(causal.num_experts)) for _ in causal.moe_layer_indices))
    (m,), info = ev.measure_fidelity(causal, heldout, [keep_all], batch_size=4)
    assert m["kl"] == pytest.approx(0.0, abs=1e-6)
    assert m["top1"] == 1.0 and m["ppl_ratio"] == pytest.approx(1.0, abs=1e-6)
    assert info["scored_tokens"] == heldout.num_scored


# --- the sweep on tiny models (both classes) ---------------------------------------------------

def test_sweep_gives_monotone_plans_and_finite_metrics(tiny, tiny_stats, heldout):
    calls = []
    res = ev.run_fidelity_sweep(tiny, tiny_stats, heldout, RATIOS, ev.DEFAULT_CRITERIA, batch_size=4,
                                progress=lambda d, t: calls.append((d, t)))
    E = tiny.num_experts
    for c in res.criteria:
        kept = [res.point(c, r).experts_kept for r in res.ratios]
        assert kept == [E - math.floor(E * r) for r in RATIOS] and kept == sorted(kept, reverse=True)
        for r in res.ratios:
            p = res.point(c, r)
            assert all(map(math.isfinite, (p.kl, p.top1, p.ppl_ratio))) and p.kl >= -1e-6 and 0 <= p.top1 <= 1
        assert res.point(c, 0.0).kl == 0.0 and res.point(c, 0.0).top1 == 1.0
        assert res.point(c, 0.75).kl > 1e-4  # pruning 12 of 16 experts changes the distribution
    assert calls[-1][0] == calls[-1][1] and calls[-1][1] == res.timing["batches"] * (1 + res.timing["unique_plans"])
    back = ev.FidelityResult.from_dict(json.loads(json.dumps(res.to_dict())))
    assert back.series("reap", "kl") == res.series("reap", "kl")
    fig = ev.fidelity_figure(res, "top1", current_ratio=0.5)
    assert len(fig.data) == len(res.criteria) and list(fig.data[0].x) == list(RATIOS)
    assert any(s.x0 == 0.5 for s in fig.layout.shapes)  # the current ratio is marked


def test_sweep_equals_a_direct_full_logits_computation(causal, causal_stats, heldout):
    """Batching, padding and logits_to_keep must not change the numbers."""
    plan = make_plan(causal_stats, 0.5, "frequency")
    (batched,), _ = ev.measure_fidelity(causal, heldout, [plan], batch_size=3)
    kl = agree = n = 0
    with torch.inference_mode():
        for ids, start in zip(heldout.token_ids, heldout.score_from):
            x = torch.tensor([ids])
            ref = causal.model(input_ids=x).logits[0].float().log_softmax(-1)
            with masked_view(causal, plan):
                test = causal.model(input_ids=x).logits[0].float().log_softmax(-1)
            ref, test = ref[start - 1:-1], test[start - 1:-1]   # logits at t-1 predict token t
            kl += float((ref.exp() * (ref - test)).sum())
            agree += int((ref.argmax(-1) == test.argmax(-1)).sum())
            n += ref.shape[0]
    assert n == heldout.num_scored
    assert batched["kl"] == pytest.approx(kl / n, rel=1e-3, abs=1e-6)
    assert batched["top1"] == pytest.approx(agree / n, abs=1.5 / n)


def test_infeasible_ratio_is_refused(causal, causal_stats, heldout):
    with pytest.raises(InvalidPlan, match="fewer than"):
        ev.run_fidelity_sweep(causal, causal_stats, heldout, (0.0, 0.9), ("reap",))
    assert ev.feasible_ratios(16, 6) == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]


def test_cache_runs_once(causal, causal_stats, heldout, monkeypatch):
    cache = ev.FidelityCache()
    first, hit = cache.get_or_run(causal, causal_stats, heldout, (0.0, 0.5), ("reap",), batch_size=8)
    assert not hit
    monkeypatch.setattr(ev, "run_fidelity_sweep", lambda *a, **k: pytest.fail("cache miss"))
    again, hit = cache.get_or_run(causal, causal_stats, heldout, (0.5, 0.0), ("reap",))
    assert hit and again is first


# --- held-out data ----------------------------------------------------------------------------

def test_heldout_never_contains_calibration_samples(tokenizer):
    plain = ev.build_heldout("toy:3", tokenizer, max_tokens=1024)
    first_math = Sample("math", messages=tuple(toy_tasks.to_messages(toy_tasks.generate("math", 1, ev.HELDOUT_SEED)[0])))
    calib = tokenize_samples([first_math, Sample("x", text="unrelated")], tokenizer, max_tokens=64)
    excl = ev.calibration_exclusion(calib, tokenizer)
    held = ev.build_heldout("toy:3", tokenizer, excl, max_tokens=1024)
    assert held.excluded == 1 and len(held.token_ids) == len(plain.token_ids) == 15  # topped up
    cal_prefixes = {tuple(ids) for ids in calib.token_ids}
    assert not any(tuple(ids[:64]) in cal_prefixes for ids in held.token_ids)
    assert held.fingerprint() != plain.fingerprint()


def test_heldout_scores_the_answer_only(tokenizer):
    held = ev.build_heldout("toy:1", tokenizer)
    item = toy_tasks.generate(toy_tasks.DOMAINS[0], 1, ev.HELDOUT_SEED)[0]
    ids, start = held.token_ids[0], held.score_from[0]
    assert tokenizer.decode(ids[start:]).startswith(item.answer)
    assert item.prompt in tokenizer.decode(ids[:start])
    everything = ev.build_heldout("toy:1", tokenizer, positions="all")
    assert everything.score_from == [1] * 5 and everything.num_scored > held.num_scored


# --- generation quality -------------------------------------------------------------------------

def test_a_known_loop_is_detected_and_normal_text_is_not():
    assert ev.find_loop("Sure. " + "I like the cat, " * 8 + "end") == (5, 8)
    assert ev.is_loop("no " * 30)
    normal = ("The sky is blue because air molecules scatter short wavelengths of sunlight more than long "
              "ones; this is Rayleigh scattering, and it is why sunsets look red.")
    assert not ev.is_loop(normal)
    assert not ev.is_loop(", ".join(str(i) for i in range(1, 51)))
    assert not ev.is_loop("| a | b | c | d | e | f |\n" + "|---" * 12 + "|")   # table rules hold no word
    assert not ev.is_loop("la la la")                                             # too short to count


def test_collapse():
    assert ev.is_collapse("") and ev.is_collapse("  \n ") and ev.is_collapse("... !!")
    assert ev.is_collapse("the the the the the the cat the the the the")
    assert not ev.is_collapse("One, two, three, four, five, six, seven, eight, nine, ten.")
    assert not ev.is_collapse("42")


def test_generation_report_on_a_tiny_model(causal, causal_stats):
    plan = make_plan(causal_stats, 0.5, "reap")
    prompts = [("math", "2 + 2 ="), ("math", "3 * 3 ="), ("chat", "hello")]
    rep = ev.generation_quality(causal, plan, prompts, max_new_tokens=6, batch_size=2)
    assert list(rep.per_domain) == ["math", "chat"]
    assert rep.per_domain["math"]["pruned"].n == 2 and len(rep.samples) == 3
    table = rep.format_table()
    assert table.startswith("| Domain | N | Orig AvgWords | Pruned AvgWords | Orig Loop | Pruned Loop |")
    assert rep.overall("original").n == 3
    assert ev.GenerationReport.from_dict(json.loads(json.dumps(rep.to_dict()))).format_table() == table


# --- task accuracy ------------------------------------------------------------------------------

def test_answer_after_the_thinking_channel_is_extracted():
    item = gemma_bench.items("math")[0]    # answer 25
    raw = "<|channel>thought\nMaybe 84 - 59 = 24? Answer: 24. No: 25.<channel|>84 - 59 = 25.\nAnswer: 25<turn|>"
    assert gemma_bench.extract(item, raw) == "25" and gemma_bench.check(item, raw)
    assert not gemma_bench.check(item, "<|channel>thought\nAnswer: 25 ... still thinking")  # never closed
    assert gemma_bench.final_text("<|channel>thought\nhmm")[1] is True
    mc = gemma_bench.items("multiple-choice")[0]   # C
    assert gemma_bench.check(mc, "<|channel>thought\nA? no.<channel|>Carbon dioxide.\nAnswer: (C)")
    assert gemma_bench.extract(mc, "Answer: The answer is B") == "B"
    assert gemma_bench.extract_number("so the total is $1,250.") == 1250


def test_bench_items_are_well_formed():
    items = gemma_bench.items()
    assert len(items) >= 30 and {it.domain for it in items} == set(gemma_bench.DOMAINS)
    assert len({it.id for it in items}) == len(items)
    for it in items:   # the reference answer grades as correct
        assert gemma_bench.check(it, it.reference), it.id


def test_bench_registers_as_a_task_eval_suite(monkeypatch):
    monkeypatch.setattr(task_eval, "SUITES", dict(task_eval.SUITES))
    gemma_bench.register_suite()
    suite = task_eval.get_suite("gemma4-bench")
    item = suite.generate("math", 2, 0)[0]
    assert len(suite.generate("math", 2, 0)) == 2 and suite.check("math", item, item.reference)


def test_task_accuracy_counts_samples(causal, causal_stats):
    plan = make_plan(causal_stats, 0.5, "reap")
    rep = ev.task_accuracy(causal, plan, suite="gemma4-bench", items_per_domain=1, max_new_tokens=4, batch_size=2)
    assert rep.samples == 2 and set(rep.per_domain) == set(gemma_bench.DOMAINS)
    assert all(r["pruned"][1] == 1 for r in rep.per_domain.values())
    card = ev.card_eval_results(plan, tasks=rep)
    assert "_description" in card and any(k.startswith("gemma4-bench · all (n=2)") for k in card)
