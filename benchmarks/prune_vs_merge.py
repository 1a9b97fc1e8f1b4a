"""Prune or merge? REAP and frequency pruning vs HC-SMoE, M-SMoE-style and REAM-style merging, on the
bundled model, from ONE calibration (the app's default), on the same held-out data.

  python benchmarks/prune_vs_merge.py                        # 25% and 50%, 20 items per task
  python benchmarks/prune_vs_merge.py --ratios 0.25,0.5 --items 40

Per method and ratio: task accuracy per domain (greedy, program-checked, 95% Wilson intervals), fidelity
to the original (next-token KL and top-1 agreement on the held-out set), generation quality (loop and
collapse rates), and what the method costs: seconds to plan / build, memory beside the original model
(merged experts), plus the merge signals' one extra calibration pass. Writes
benchmarks/results/prune_vs_merge.json and prints Markdown tables for the README.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from reap_core.calibration import build_calibration  # noqa: E402
from reap_core.demo import DEFAULT_CALIBRATION  # noqa: E402
from reap_core.eval_defaults import defaults_for  # noqa: E402
from reap_core.fidelity import measure_fidelity  # noqa: E402
from reap_core.generation_quality import generation_quality  # noqa: E402
from reap_core.heldout import build_heldout, calibration_exclusion  # noqa: E402
from reap_core.merge_plan import MERGE_LABELS, plan_merge  # noqa: E402
from reap_core.merge_signals import collect_merge_signals  # noqa: E402
from reap_core.merging import build_merged  # noqa: E402
from reap_core.model import BUNDLED_MODEL, load_model  # noqa: E402
from reap_core.observer import observe  # noqa: E402
from reap_core.plan import make_plan  # noqa: E402
from reap_core.task_eval import suite_accuracy  # noqa: E402
from reap_core.vision_eval import wilson  # noqa: E402

PRUNERS = {"reap": "REAP prune", "frequency": "frequency prune"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=BUNDLED_MODEL)
    ap.add_argument("--ratios", default="0.25,0.5")
    ap.add_argument("--items", type=int, default=20, help="items per task (8 tasks)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "prune_vs_merge.json"))
    ap.add_argument("--markdown", help="print the tables of an earlier results file and exit")
    args = ap.parse_args()
    if args.markdown:
        print(markdown(json.loads(Path(args.markdown).read_text())))
        return
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    loaded = load_model(args.model)
    d = defaults_for(loaded)
    c = DEFAULT_CALIBRATION   # the app's default: 16 samples of each toy task
    calib = build_calibration(c["spec"], loaded.tokenizer, max_tokens=c["max_tokens"],
                              samples_per_category=c["samples_per_category"], processor=loaded.processor)
    t = time.perf_counter()
    stats = observe(loaded, calib)
    observe_s = time.perf_counter() - t
    signals = collect_merge_signals(loaded, calib)
    print(f"calibration: {len(calib.token_ids)} samples, {calib.num_tokens} tokens; REAP statistics {observe_s:.1f} s, "
          f"merge signals (one more pass) {signals.seconds:.1f} s", flush=True)
    heldout = build_heldout(d["heldout"], loaded.tokenizer, calibration_exclusion(stats, loaded.tokenizer))

    variants = [("original", None, {"seconds": 0.0, "extra_bytes": 0})]
    for ratio in [float(r) for r in args.ratios.split(",")]:
        for name in PRUNERS:
            t = time.perf_counter()
            plan = make_plan(stats, ratio, name)
            variants.append((f"{name} {ratio:.0%}", plan, {"seconds": time.perf_counter() - t, "extra_bytes": 0}))
        for method in MERGE_LABELS:
            t = time.perf_counter()
            merged = build_merged(loaded, plan_merge(stats, signals, method, ratio))
            variants.append((f"{method} {ratio:.0%}", merged,
                             {"seconds": time.perf_counter() - t, "extra_bytes": merged.nbytes,
                              "largest_cluster": merged.plan.largest_cluster, "aligned": merged.plan.align}))

    metrics, info = measure_fidelity(loaded, heldout, [v for _, v, _ in variants])
    rows = []
    for (name, view, cost), fid in zip(variants, metrics):
        t = time.perf_counter()
        acc = suite_accuracy(loaded, view, items_per_domain=args.items)
        gen = generation_quality(loaded, view) if view is not None else None
        per_domain = {dom: {"correct": c, "total": n, "ci95": wilson(c, n)} for dom, (c, n) in acc.per_domain.items()}
        correct = sum(c for c, _ in acc.per_domain.values())
        total = sum(n for _, n in acc.per_domain.values())
        quality = gen.overall("pruned") if gen is not None else None
        rows.append({"variant": name, "per_domain": per_domain, "correct": correct, "total": total,
                     "ci95": wilson(correct, total), "kl": fid["kl"], "top1": fid["top1"],
                     "ppl_ratio": fid["ppl_ratio"], "loop_rate": quality.loop_rate if quality else None,
                     "collapse_rate": quality.collapse_rate if quality else None,
                     "avg_words": quality.avg_words if quality else None, **cost,
                     "eval_seconds": time.perf_counter() - t})
        print(f"{name:>16}: {correct}/{total} ({correct / total:.0%}), KL {fid['kl']:.3f}, top-1 {fid['top1']:.3f}",
              flush=True)

    report = {"model": args.model, "calibration": {"spec": calib.spec, "samples": len(calib.token_ids),
                                                   "tokens": calib.num_tokens, "reap_stats_seconds": observe_s,
                                                   "merge_signals_seconds": signals.seconds},
              "heldout": heldout.describe(), "items_per_task": args.items, "rows": rows,
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
                         f"{torch.__version__}, {args.threads} threads", "seconds": time.perf_counter() - t_start}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(markdown(report))


def markdown(report: dict) -> str:
    rows = report["rows"]
    domains = list(rows[0]["per_domain"])
    n = rows[0]["per_domain"][domains[0]]["total"]
    head = ("| variant | " + " | ".join(f"{d} /{n}" for d in domains)
            + f" | all /{rows[0]['total']} | KL | top-1 | loops | collapse | cost |")
    lines = [head, "|---|" + "---:|" * (len(domains) + 6)]
    for r in rows:
        cells = [f"{v['correct']} ({v['ci95'][0]:.0%}–{v['ci95'][1]:.0%})".replace("%–", "–")
                 for v in r["per_domain"].values()]
        lo, hi = r["ci95"]
        cost = ("–" if r["variant"] == "original" else
                f"{r['seconds']:.2f} s" + (f", +{r['extra_bytes'] / 2**20:.1f} MB" if r["extra_bytes"] else ""))
        loops = "–" if r["loop_rate"] is None else f"{r['loop_rate']:.0%}"
        collapse = "–" if r["collapse_rate"] is None else f"{r['collapse_rate']:.0%}"
        lines.append(f"| {r['variant']} | " + " | ".join(cells) + f" | **{r['correct'] / r['total']:.0%}** "
                     f"({lo:.0%}–{hi:.0%}) | {r['kl']:.3f} | {r['top1']:.3f} | {loops} | {collapse} | {cost} |")
    c = report["calibration"]
    lines.append(f"\nCorrect answers per task (95% Wilson interval); {report['items_per_task']} items per task; calibration {c['samples']} samples, {c['tokens']} "
                 f"tokens (REAP statistics {c['reap_stats_seconds']:.1f} s; merge signals, one more pass, "
                 f"{c['merge_signals_seconds']:.1f} s); {report['machine']}; {report['seconds'] / 60:.1f} min in all.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
