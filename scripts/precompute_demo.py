"""Regenerate the bundled model's demo pack (assets/demo/): default-calibration statistics, the
fidelity sweep, generation quality and task accuracy of a few REAP prunes, and the answers to the
example prompts — with the same reap_core functions the app calls. Run it after retraining the
bundled model or changing its defaults (tests/test_demo.py fails until you do):

    python scripts/precompute_demo.py          # ~5-10 min on 2 CPU cores
"""

from __future__ import annotations

import datetime
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from reap_core import toy_tasks  # noqa: E402
from reap_core.calibration import build_calibration  # noqa: E402
from reap_core.demo import (DEFAULT_CALIBRATION, EVAL_PLANS, EXAMPLE_RATIOS, EXAMPLES, PACK_FILE, STATS_FILE,  # noqa: E402
                            DemoPack, weights_sha256)
from reap_core.eval_defaults import defaults_for  # noqa: E402
from reap_core.fidelity import feasible_ratios, run_fidelity_sweep  # noqa: E402
from reap_core.generation_quality import generation_quality  # noqa: E402
from reap_core.greedy import generate_greedy  # noqa: E402
from reap_core.heldout import build_heldout, calibration_exclusion  # noqa: E402
from reap_core.masking import masked_view  # noqa: E402
from reap_core.model import BUNDLED_MODEL, load_model  # noqa: E402
from reap_core.observer import observe  # noqa: E402
from reap_core.plan import make_plan  # noqa: E402
from reap_core.progress import TerminalProgress  # noqa: E402
from reap_core.saliency import CRITERIA  # noqa: E402
from reap_core.task_eval import task_accuracy  # noqa: E402


def find_item(domain: str, prompt: str) -> toy_tasks.Item:
    for seed in (42, toy_tasks.EVAL_SEED):
        for item in toy_tasks.generate(domain, 50, seed):
            if item.prompt == prompt:
                return item
    raise SystemExit(f"example prompt not found among the generated {domain} items: {prompt!r}")


def main() -> None:
    t0 = time.perf_counter()
    loaded = load_model(BUNDLED_MODEL)
    cal = DEFAULT_CALIBRATION
    calib = build_calibration(cal["spec"], loaded.tokenizer, max_tokens=cal["max_tokens"],
                              samples_per_category=cal["samples_per_category"], processor=loaded.processor)
    bar = TerminalProgress("calibration", "tokens")
    stats = observe(loaded, calib, batch_size=cal["batch_size"], progress=lambda d, t, tok: bar.update(tok, calib.num_tokens))
    bar.close()
    STATS_FILE.parent.mkdir(parents=True, exist_ok=True)
    stats.save(STATS_FILE)
    print(f"statistics: {calib.num_tokens} tokens, fingerprint {calib.fingerprint()} -> {STATS_FILE}")

    heldout = build_heldout(defaults_for(loaded)["heldout"], loaded.tokenizer,
                            calibration_exclusion(stats, loaded.tokenizer))
    bar = TerminalProgress("fidelity sweep", "forward passes")
    sweep = run_fidelity_sweep(loaded, stats, heldout, feasible_ratios(loaded.num_experts, loaded.top_k),
                               list(CRITERIA), progress=bar.update)
    bar.close()
    print(sweep.format_table("kl"))

    evals = []
    for criterion, ratio in EVAL_PLANS:
        plan = make_plan(stats, ratio, criterion)
        bar = TerminalProgress(f"generation quality {criterion} {ratio:.0%}", "answers")
        gen = generation_quality(loaded, plan, progress=bar.update)
        bar.close()
        bar = TerminalProgress(f"task accuracy {criterion} {ratio:.0%}", "answers")
        tasks = task_accuracy(loaded, plan, progress=bar.update)
        bar.close()
        print(f"{criterion} {ratio:.0%}:\n{tasks.format_table()}")
        evals.append(dict(criterion=criterion, ratio=ratio, kept=[list(k) for k in plan.kept],
                          generation=gen.to_dict(), tasks=tasks.to_dict()))

    convs = [[{"role": "user", "content": e.prompt}] for e in EXAMPLES]
    variants = [("original", None)] + [(f"REAP {r:.0%}", make_plan(stats, r, "reap")) for r in EXAMPLE_RATIOS]
    answers = {}
    for name, plan in variants:
        with masked_view(loaded, plan):
            answers[name] = generate_greedy(loaded.model, loaded.tokenizer, convs, 96, 8)
    examples = []
    for i, e in enumerate(EXAMPLES):
        item = find_item(e.domain, e.prompt)
        got = {name: dict(text=answers[name][i].text, correct=toy_tasks.check(e.domain, item, answers[name][i].text))
               for name, _ in variants}
        print(f"[{e.domain}] " + " | ".join(f"{n}: {'right' if g['correct'] else 'WRONG'}" for n, g in got.items()))
        examples.append(dict(domain=e.domain, prompt=e.prompt, answers=got))

    when = datetime.date.today().isoformat()
    machine = f"{platform.machine()} CPU, torch {torch.__version__.split('+')[0]}"
    pack = DemoPack(model_sha256=weights_sha256(loaded.read_from),
                    calibration={**cal, "fingerprint": calib.fingerprint(), "tokens": calib.num_tokens},
                    created=f"measured {when} on {machine} by scripts/precompute_demo.py",
                    fidelity=dict(heldout_fingerprint=heldout.fingerprint(), result=sweep.to_dict()),
                    evals=evals, examples=examples, stats_file=STATS_FILE.name)
    pack.save(PACK_FILE)
    print(f"wrote {PACK_FILE} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
