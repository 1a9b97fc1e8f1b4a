"""The Evaluate step: held-out data (heldout.py), fidelity metrics and sweep (fidelity.py), loop and
collapse detection (generation_quality.py), suites, answer extraction and task accuracy
(task_eval.py, gemma_bench.py, greedy.py), the figure (viz.py) and the card rows."""

import json
import math

import pytest
import torch
from transformers import AutoTokenizer

from reap_core import fidelity as fid
from reap_core import card as card_rows, gemma_bench, task_eval, toy_tasks
from reap_core import generation_quality as gq
from reap_core import heldout as ho
from reap_core.calibration import Sample, tokenize_samples
from reap_core.errors import InvalidPlan
from reap_core.masking import masked_view
from reap_core.model import BUNDLED_MODEL_DIR, wrap_model
from reap_core.observer import observe
from reap_core.plan import PruningPlan, make_plan
from reap_core.tiny import build_tiny_model
from reap_core.viz import fidelity_figure

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
    return ho.build_heldout("toy:2", tokenizer, max_tokens=160)


# --- metrics on constructed cases -------------------------------------------------------------

def test_compare_identical_and_known_kl():
    ref = torch.randn(7, 11).log_softmax(-1)
    targets = torch.randint(0, 11, (7,))
    same = fid.compare_log_probs(ref, ref.clone(), targets)
    assert same["kl"] == pytest.approx(0.0, abs=1e-6) and same["agree"] == 7
    assert same["nll_ref"] == pytest.approx(same["nll_test"])
    p, q = torch.tensor([[0.4, 0.6]]), torch.tensor([[0.9, 0.1]])
    known = fid.compare_log_probs(p.log(), q.log(), torch.tensor([1]))
    assert known["kl"] == pytest.approx(0.4 * math.log(0.4 / 0.9) + 0.6 * math.log(0.6 / 0.1), rel=1e-5)
    assert known["agree"] == 0
    assert known["nll_test"] - known["nll_ref"] == pytest.approx(math.log(0.6 / 0.1), rel=1e-5)


def test_a_plan_that_keeps_every_expert_equals_the_original(causal, heldout):
    keep_all = PruningPlan(criterion="none", compression_ratio=0.0, num_experts=causal.num_experts, top_k=causal.top_k,
                           layer_indices=tuple(causal.moe_layer_indices),
                           kept=tuple(tuple(range(causal.num_experts)) for _ in causal.moe_layer_indices))
    (m,), info = fid.measure_fidelity(causal, heldout, [keep_all], batch_size=4)
    assert m["kl"] == pytest.approx(0.0, abs=1e-6)
    assert m["top1"] == 1.0 and m["ppl_ratio"] == pytest.approx(1.0, abs=1e-6)
    assert info["scored_tokens"] == heldout.num_scored


# --- the sweep on tiny models (both classes) ---------------------------------------------------

def test_sweep_gives_monotone_plans_and_finite_metrics(tiny, tiny_stats, heldout):
    calls = []
    res = fid.run_fidelity_sweep(tiny, tiny_stats, heldout, RATIOS, fid.DEFAULT_CRITERIA, batch_size=4,
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
    assert calls[-1][0] == calls[-1][1] == res.timing["forwards"] and [d for d, _ in calls] == list(range(1, len(calls) + 1))
    back = fid.FidelityResult.from_dict(json.loads(json.dumps(res.to_dict())))
    assert back.series("reap", "kl") == res.series("reap", "kl")
    fig = fidelity_figure(res, "top1", current_ratio=0.5)
    assert len(fig.data) == len(res.criteria) and list(fig.data[0].x) == list(RATIOS)
    assert any(s.x0 == 0.5 for s in fig.layout.shapes)  # the current ratio is marked


def test_sweep_equals_a_direct_full_logits_computation(causal, causal_stats, heldout):
    """Batching, padding and logits_to_keep must not change the numbers."""
    plan = make_plan(causal_stats, 0.5, "frequency")
    (batched,), _ = fid.measure_fidelity(causal, heldout, [plan], batch_size=3)
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
        fid.run_fidelity_sweep(causal, causal_stats, heldout, (0.0, 0.9), ("reap",))
    assert fid.feasible_ratios(16, 6) == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6]


def test_cache_runs_once(causal, causal_stats, heldout, monkeypatch):
    cache = fid.FidelityCache()
    first, hit = cache.get_or_run(causal, causal_stats, heldout, (0.0, 0.5), ("reap",), batch_size=8)
    assert not hit
    monkeypatch.setattr(fid, "run_fidelity_sweep", lambda *a, **k: pytest.fail("cache miss"))
    again, hit = cache.get_or_run(causal, causal_stats, heldout, (0.5, 0.0), ("reap",))
    assert hit and again is first


# --- held-out data ----------------------------------------------------------------------------

def test_heldout_never_contains_calibration_samples(tokenizer):
    plain = ho.build_heldout("toy:3", tokenizer, max_tokens=1024)
    first = toy_tasks.generate("math", 1, ho.HELDOUT_SEED)[0]
    first_math = Sample("math", messages=tuple(toy_tasks.to_messages(first)))
    calib = tokenize_samples([first_math, Sample("x", text="unrelated")], tokenizer, max_tokens=64)
    excl = ho.calibration_exclusion(calib, tokenizer)
    held = ho.build_heldout("toy:3", tokenizer, excl, max_tokens=1024)
    assert held.excluded == 1 and len(held.token_ids) == len(plain.token_ids) == 15  # topped up
    cal_prefixes = {tuple(ids) for ids in calib.token_ids}
    assert not any(tuple(ids[:64]) in cal_prefixes for ids in held.token_ids)
    assert held.fingerprint() != plain.fingerprint()


def test_heldout_scores_the_answer_only(tokenizer):
    held = ho.build_heldout("toy:1", tokenizer)
    item = toy_tasks.generate(toy_tasks.DOMAINS[0], 1, ho.HELDOUT_SEED)[0]
    ids, start = held.token_ids[0], held.score_from[0]
    assert tokenizer.decode(ids[start:]).startswith(item.answer)
    assert item.prompt in tokenizer.decode(ids[:start])
    everything = ho.build_heldout("toy:1", tokenizer, positions="all")
    assert everything.score_from == [1] * 5 and everything.num_scored > held.num_scored


def test_heldout_records_what_was_really_scored(tokenizer, calib_file):
    """4 raw-text rows and 3 chats: the chats are scored on their answers, the texts on every
    token, and the record says "mixed" and why, not "answer"."""
    held = ho.build_heldout(str(calib_file), tokenizer)
    texts = [i for i, c in enumerate(held.categories) if c == "greek"]
    assert len(held.token_ids) == 7 and len(texts) == 4
    assert [held.score_from[i] for i in texts] == [1, 1, 1, 1]
    assert all(held.score_from[i] > 1 for i in range(7) if i not in texts)
    d = held.describe()
    assert d["positions"] == "mixed" and d["positions_requested"] == "answer" and d["all_tokens_sequences"] == 4
    assert d["positions_note"] == ("4 of 7 sequences scored on all tokens: their answer could not be located "
                                   "(no assistant turn (4))")
    chats = ho.build_heldout("toy:1", tokenizer)
    assert chats.describe()["positions"] == "answer" and chats.describe()["positions_note"] == ""


def test_a_template_that_fails_on_the_prompt_is_a_recorded_fallback(tokenizer):
    import copy

    tok = copy.deepcopy(tokenizer)   # renders whole conversations, refuses a generation prompt
    tok.chat_template = ("{% if add_generation_prompt %}{{ raise_exception('no generation prompt') }}{% endif %}"
                         "{% for m in messages %}<|turn>{{ m['role'] }}\n{{ m['content'] }}<turn|>\n{% endfor %}")
    held = ho.build_heldout("toy:1", tok)
    assert held.score_from == [1] * 5 and held.describe()["positions"] == "all"
    assert held.fallback_reasons == {"the chat template failed on the prompt (TemplateError)": 5}


def test_the_sweep_result_shows_what_was_scored(causal, causal_stats, tokenizer, calib_file):
    held = ho.build_heldout(str(calib_file), tokenizer)
    res = fid.run_fidelity_sweep(causal, causal_stats, held, (0.0, 0.5), ("reap",), batch_size=4)
    assert res.to_dict()["heldout"]["positions"] == "mixed"
    table = res.format_table("kl")
    assert table.splitlines()[-1] == (f"Scored: {held.num_scored} tokens (answers; 4 sequences on all tokens) of 7 "
                                      f"held-out sequences from '{calib_file}'. {held.fallback_note}.")
    assert "answers; 4 sequences on all tokens" in fidelity_figure(res).layout.title.text
    card = card_rows.card_eval_results(make_plan(causal_stats, 0.5, "reap"), fidelity=res)
    assert held.fallback_note in card["_description"]
    assert "No calibration given: nothing excluded." in card["_description"]   # not "calibration samples excluded"


# --- generation quality -------------------------------------------------------------------------

def test_a_known_loop_is_detected_and_normal_text_is_not():
    assert gq.find_loop("Sure. " + "I like the cat, " * 8 + "end") == (5, 8)
    assert gq.is_loop("no " * 30)
    normal = ("The sky is blue because air molecules scatter short wavelengths of sunlight more than long "
              "ones; this is Rayleigh scattering, and it is why sunsets look red.")
    assert not gq.is_loop(normal)
    assert not gq.is_loop(", ".join(str(i) for i in range(1, 51)))
    assert not gq.is_loop("| a | b | c | d | e | f |\n" + "|---" * 12 + "|")   # table rules hold no word
    assert not gq.is_loop("la la la")                                             # too short to count


def test_collapse():
    assert gq.is_collapse("") and gq.is_collapse("  \n ") and gq.is_collapse("... !!")
    assert gq.is_collapse("the the the the the the cat the the the the")
    assert not gq.is_collapse("One, two, three, four, five, six, seven, eight, nine, ten.")
    assert not gq.is_collapse("42")


def test_generation_report_on_a_tiny_model(causal, causal_stats):
    plan = make_plan(causal_stats, 0.5, "reap")
    prompts = [("math", "2 + 2 ="), ("math", "3 * 3 ="), ("chat", "hello")]
    rep = gq.generation_quality(causal, plan, prompts, max_new_tokens=6, batch_size=2)
    assert list(rep.per_domain) == ["math", "chat"]
    assert rep.per_domain["math"]["pruned"].n == 2 and len(rep.samples) == 3
    table = rep.format_table()
    assert table.startswith("| Domain | N | Orig AvgWords | Pruned AvgWords | Orig Loop | Pruned Loop |")
    assert rep.overall("original").n == 3
    assert gq.GenerationReport.from_dict(json.loads(json.dumps(rep.to_dict()))).format_table() == table


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


def test_one_registry_holds_both_suites():
    assert set(task_eval.SUITES) == {"toy", "gemma4-bench"}       # no registration step, no import circle
    suite = task_eval.get_suite("gemma4-bench")
    item = suite.generate("math", 2, 0)[0]
    assert len(suite.generate("math", 2, 0)) == 2 and suite.check("math", item, item.reference)
    with pytest.raises(ValueError, match="valid suites: gemma4-bench, toy"):
        task_eval.get_suite("nope")


def test_task_accuracy_counts_samples(causal, causal_stats):
    plan = make_plan(causal_stats, 0.5, "reap")
    rep = task_eval.task_accuracy(causal, plan, suite="gemma4-bench", items_per_domain=1, max_new_tokens=4,
                                  batch_size=2)
    assert rep.samples == 2 and set(rep.per_domain) == set(gemma_bench.DOMAINS)
    assert all(r["pruned"][1] == 1 for r in rep.per_domain.values())
    card = card_rows.card_eval_results(plan, tasks=rep)
    assert "_description" in card and any(k.startswith("gemma4-bench · all (n=2)") for k in card)


# --- one greedy function: the original scores the same everywhere ------------------------------

SCRIPTED_UNFINISHED = "<|channel>thought\n84 - 59 = 25, so Answer: 25. Let me double-check the subtraction"


@pytest.fixture
def scripted(monkeypatch):
    """A tiny Gemma 4 MoE with the bundled tokenizer (real <|channel> special tokens) whose greedy
    continuation is fixed: set `.script`. The budget still cuts it (max_new_tokens)."""
    tok = AutoTokenizer.from_pretrained(BUNDLED_MODEL_DIR)
    loaded = wrap_model(build_tiny_model("causal", vocab_size=len(tok)), tok, model_id="tiny-scripted")
    loaded.script = SCRIPTED_UNFINISHED

    def generate(input_ids, max_new_tokens, **_):
        ids = tok(loaded.script, add_special_tokens=False)["input_ids"][:max_new_tokens]
        return torch.cat([input_ids, torch.tensor(ids).repeat(input_ids.shape[0], 1)], 1)

    monkeypatch.setattr(loaded.model, "generate", generate)
    return loaded


def test_the_original_scores_the_same_with_and_without_a_plan(scripted):
    """`eval --suite gemma4-bench` without --ratio (suite_accuracy of the original) and with it
    (task_accuracy's Original column) once disagreed: an answer whose reasoning never closed was
    graded right by one path (special tokens dropped, 'Answer: 25' found in the thought) and wrong
    by the other. Both now grade the same answer the same way, and count it as unfinished."""
    plan = PruningPlan(criterion="first", compression_ratio=0.25, num_experts=16, top_k=4, layer_indices=(0, 1, 2),
                       kept=tuple(tuple(range(12)) for _ in range(3)))
    alone = task_eval.suite_accuracy(scripted, None, "gemma4-bench", items_per_domain=1)
    both = task_eval.task_accuracy(scripted, plan, "gemma4-bench", items_per_domain=1)
    assert alone.per_domain == {d: tuple(r["original"]) for d, r in both.per_domain.items()}
    assert alone.per_domain["math"] == (0, 1) and alone.unfinished == 2 == both.unfinished["original"]
    assert "ran out of tokens inside the reasoning channel" in alone.format_table()
    scripted.script = "<|channel>thought\nmaybe 24?<channel|>84 - 59 = 25.\nAnswer: 25<turn|>"
    closed = task_eval.suite_accuracy(scripted, None, "gemma4-bench", items_per_domain=1)
    assert closed.per_domain == {"math": (1, 1), "multiple-choice": (0, 1)} and closed.unfinished == 0


def test_greedy_answers_keep_special_tokens_and_say_why_they_stopped(scripted):
    from reap_core.greedy import generate_greedy

    tok = scripted.tokenizer
    tok.padding_side = "right"
    convs = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "a longer question"}]]
    short, = generate_greedy(scripted.model, tok, convs[:1], max_new_tokens=3)
    assert short.raw.startswith("<|channel>") and short.hit_limit and short.unfinished and short.text == ""
    scripted.script = "<|channel>thought\nhm<channel|>Yes.<eos>"
    done = generate_greedy(scripted.model, tok, convs, max_new_tokens=64, batch_size=1)
    assert [a.text for a in done] == ["Yes.", "Yes."] and not any(a.hit_limit or a.unfinished for a in done)
    assert tok.padding_side == "right"          # left padding only while generating
