"""Progress reports, and the bundled model's demo pack: its precomputed results must be what a live
run gives, it must never be served for other work, and its example prompts must be true to their labels."""

from __future__ import annotations

import copy
import io

import pytest

from reap_core import toy_tasks
from reap_core.demo import (DEFAULT_CALIBRATION, EXAMPLE_RATIOS, EXAMPLES, load_pack, precomputed_eval,
                            precomputed_stats, precomputed_sweep, weights_sha256)
from reap_core.model import BUNDLED_MODEL_DIR
from reap_core.progress import ProgressClock, TerminalProgress, human_seconds


# --- progress ----------------------------------------------------------------------------------

class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_progress_clock_counts_elapsed_and_eta():
    clock = FakeClock()
    p = ProgressClock("Calibration", "tokens", clock=clock)
    s = p.update(0, 1000)
    assert s.eta is None and s.fraction == 0 and "estimating time left" in s.line()
    clock.t += 10                       # 250 tokens in 10 s -> 750 more take 30 s
    s = p.update(250, 1000)
    assert s.elapsed == 10 and s.eta == pytest.approx(30)
    assert s.line() == "Calibration: 250 / 1,000 tokens (25%) · 10 s elapsed · about 30 s left"
    clock.t += 4                        # no report for 4 s: the clock keeps moving, the ETA counts down
    late = p.latest
    assert late.elapsed == 14 and late.eta == pytest.approx(26) and late.done == 250
    clock.t += 6
    assert p.update(1000, 1000).eta == 0


def test_progress_clock_first_step_estimates_from_the_start():
    clock = FakeClock()
    p = ProgressClock("Sweep", "forward passes", clock=clock)
    clock.t += 8                        # the first report comes after one step of 8 s (warm-up included)
    s = p.update(2, 10)
    assert s.eta == pytest.approx(8 * 8 / 2)


def test_fraction_reports_read_as_percent():
    p = ProgressClock("Export", "%", clock=FakeClock())
    assert p.fraction(0.426, "copying shard 2 of 5").line().startswith("Export: 43% · ")


def test_human_seconds():
    assert [human_seconds(s) for s in (0.4, 59, 65, 3725)] == ["0 s", "59 s", "1 min 05 s", "1 h 02 min"]


def test_piped_progress_prints_a_few_whole_lines():
    out = io.StringIO()                 # not a terminal
    bar = TerminalProgress("calibration", "tokens", stream=out, every=3600)
    for done in range(0, 1001):
        bar.update(done, 1000)
    bar.close()
    text = out.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert 10 <= len(lines) <= 12, lines            # one per tenth of the work, not one per step
    assert lines[-1].startswith("calibration: 1,000 / 1,000 tokens (100%)")


def test_terminal_progress_redraws_one_line():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    bar = TerminalProgress("export", "%", stream=out)
    bar.fraction(0.5, "writing")
    bar.close()
    assert out.getvalue().startswith("\r\033[K") and out.getvalue().count("\n") == 1


# --- the demo pack -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bundled():
    from reap_core.model import BUNDLED_MODEL, load_model

    return load_model(BUNDLED_MODEL)


@pytest.fixture(scope="module")
def pack():
    p = load_pack()
    assert p is not None, "assets/demo/toy-gemma4-moe.json is missing: run python scripts/precompute_demo.py"
    return p


@pytest.fixture(scope="module")
def default_stats(bundled, pack):
    from reap_core.calibration import build_calibration

    c = DEFAULT_CALIBRATION
    calib = build_calibration(c["spec"], bundled.tokenizer, max_tokens=c["max_tokens"],
                              samples_per_category=c["samples_per_category"], processor=bundled.processor)
    stats = precomputed_stats(bundled, calib.fingerprint(), pack)
    assert stats is not None, "the pack no longer matches the bundled model or its default calibration: " \
                              "run python scripts/precompute_demo.py"
    return stats


def test_pack_belongs_to_the_shipped_weights(pack):
    assert pack.model_sha256 == weights_sha256(BUNDLED_MODEL_DIR), \
        "the bundled model changed since the pack was made: run python scripts/precompute_demo.py"
    assert "precompute_demo.py" in pack.created


def test_precomputed_sweep_is_what_a_live_sweep_measures(bundled, default_stats, pack):
    from reap_core.eval_defaults import defaults_for
    from reap_core.fidelity import feasible_ratios, run_fidelity_sweep
    from reap_core.heldout import build_heldout, calibration_exclusion

    heldout = build_heldout(defaults_for(bundled)["heldout"], bundled.tokenizer,
                            calibration_exclusion(default_stats, bundled.tokenizer))
    ratios = feasible_ratios(bundled.num_experts, bundled.top_k)
    stored = precomputed_sweep(bundled, default_stats, heldout, ratios, ["reap", "random"], pack)
    assert stored is not None and stored.criteria == ["reap", "random"]
    assert {p.criterion for p in stored.points} == {"reap", "random"}
    live = run_fidelity_sweep(bundled, default_stats, heldout, ratios, ["reap", "random"])
    for c in ("reap", "random"):
        for metric in ("kl", "top1", "ppl_ratio"):
            assert stored.series(c, metric) == pytest.approx(live.series(c, metric), rel=1e-4, abs=1e-6), (c, metric)
    # other work is never answered from the pack
    assert precomputed_sweep(bundled, default_stats, heldout, ratios[:3], ["reap"], pack) is None
    assert precomputed_sweep(bundled, default_stats, heldout, ratios, ["reap", "no-such"], pack) is None
    other = copy.deepcopy(default_stats)
    other.calibration["fingerprint"] = "0" * 16
    assert precomputed_sweep(bundled, other, heldout, ratios, ["reap"], pack) is None
    wrong_model = copy.deepcopy(pack)
    wrong_model.model_sha256 = "f" * 64
    assert precomputed_sweep(bundled, default_stats, heldout, ratios, ["reap"], wrong_model) is None


def test_precomputed_evaluations_only_for_the_same_prune(bundled, default_stats, pack):
    from reap_core.plan import make_plan

    plan = make_plan(default_stats, 0.5, "reap")
    tasks = precomputed_eval("tasks", bundled, default_stats, plan, pack)
    assert tasks is not None and tasks.plan["experts_kept"] == 16 and tasks.samples == 40 * len(toy_tasks.DOMAINS)
    assert precomputed_eval("generation", bundled, default_stats, plan, pack) is not None
    for other in (make_plan(default_stats, 0.5, "frequency"), make_plan(default_stats, 0.45, "reap"),
                  make_plan(default_stats, 0.5, "reap", categories=["toy-code"]),
                  make_plan(default_stats, 0.5, "reap", protect_super_experts=True)):
        if other.kept != plan.kept or other.criterion != plan.criterion or other.categories or other.protected:
            assert precomputed_eval("tasks", bundled, default_stats, other, pack) is None


def test_examples_are_answered_right_and_their_labels_are_true(bundled, default_stats, pack):
    """The original answers every example right (checked by the toy checker, live); the verdicts
    stored for REAP 75% — which the app's example labels quote — are what the model earns now."""
    from reap_core.greedy import generate_greedy
    from reap_core.masking import masked_view
    from reap_core.plan import make_plan

    convs = [[{"role": "user", "content": e.prompt}] for e in EXAMPLES]
    stored = {e["prompt"]: e["answers"] for e in pack.examples}
    items = {e.prompt: next(it for it in toy_tasks.generate(e.domain, 50, 42) if it.prompt == e.prompt)
             for e in EXAMPLES}
    with masked_view(bundled, None):
        original = generate_greedy(bundled.model, bundled.tokenizer, convs, 96, 8)
    for e, a in zip(EXAMPLES, original):
        assert toy_tasks.check(e.domain, items[e.prompt], a.text), (e.domain, a.text)
    high = max(EXAMPLE_RATIOS)
    with masked_view(bundled, make_plan(default_stats, high, "reap")):
        pruned = generate_greedy(bundled.model, bundled.tokenizer, convs, 96, 8)
    wrong = 0
    for e, a in zip(EXAMPLES, pruned):
        record = stored[e.prompt][f"REAP {high:.0%}"]
        assert record["correct"] == toy_tasks.check(e.domain, items[e.prompt], a.text)
        wrong += not record["correct"]
    assert wrong >= 3, "the examples should show pruning changing the answer at high ratios"
