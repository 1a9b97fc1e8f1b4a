"""The bundled toy model's pruning experiments, as reported in the README (issue: "A small Gemma 4 MoE").

  1. Accuracy before pruning, per domain.
  2. Routing specialisation: per layer, the Jaccard overlap of the top-8 REAP experts of every
     pair of domains (each domain calibrated alone), against the overlap of random 8-sets.
  3. Criteria at 25% and 50% compression, calibrated on all domains: accuracy with a 95% Wilson
     interval over all items (random: several seeds, pooled).
  4. Calibration domain: REAP at 50% calibrated on one domain vs on all, accuracy per domain.

Everything runs through reap_core (observe -> make_plan -> masked_view -> run_suite), exactly
what the app and the CLI do.

    python scripts/toy_experiments.py [--items 60] [--out runs/toy_experiments.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from reap_core.calibration import build_calibration  # noqa: E402
from reap_core.masking import masked_view  # noqa: E402
from reap_core.model import load_model  # noqa: E402
from reap_core.observer import observe  # noqa: E402
from reap_core.plan import make_plan  # noqa: E402
from reap_core.saliency import compute_scores  # noqa: E402
from reap_core.task_eval import run_suite  # noqa: E402
from reap_core.toy_tasks import DOMAINS  # noqa: E402


def wilson(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    if total == 0:
        return 0.0, 0.0
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return centre - half, centre + half


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="toy-gemma4-moe")
    ap.add_argument("--items", type=int, default=60, help="eval items per domain")
    ap.add_argument("--samples", type=int, default=32, help="calibration samples per domain")
    ap.add_argument("--random-seeds", type=int, default=3)
    ap.add_argument("--out", default="runs/toy_experiments.json")
    args = ap.parse_args()
    start = time.perf_counter()
    loaded = load_model(args.model)
    report: dict = {"model": args.model, "items_per_domain": args.items, "calibration_samples": args.samples}

    def evaluate(plan=None) -> dict[str, tuple[int, int]]:
        with masked_view(loaded, plan):
            return run_suite(loaded.model, loaded.tokenizer, "toy", items_per_domain=args.items).per_domain

    def summary(per_domain: dict[str, tuple[int, int]]) -> dict:
        c = sum(v[0] for v in per_domain.values())
        t = sum(v[1] for v in per_domain.values())
        lo, hi = wilson(c, t)
        return {"correct": c, "total": t, "accuracy": c / t, "ci95": [lo, hi],
                "per_domain": {d: v[0] / v[1] for d, v in per_domain.items()}}

    # 1. before pruning
    base = summary(evaluate())
    report["original"] = base
    print(f"original: {base['accuracy']:.3f} {base['per_domain']}", flush=True)

    # 2. calibration: all domains, and each domain alone
    spec_all = "builtin:" + ",".join(f"toy-{d}" for d in DOMAINS)
    stats_all = observe(loaded, build_calibration(spec_all, loaded.tokenizer, 512, args.samples))
    per_domain_stats = {d: observe(loaded, build_calibration(f"builtin:toy-{d}", loaded.tokenizer, 512, args.samples))
                        for d in DOMAINS}

    k = 8
    overlaps, chance = [], []
    rng = np.random.default_rng(0)
    E = loaded.num_experts
    for row in range(stats_all.num_layers):
        tops = {d: set(np.argsort(-compute_scores(s, "reap")[row])[:k].tolist()) for d, s in per_domain_stats.items()}
        for a, b in itertools.combinations(DOMAINS, 2):
            overlaps.append(jaccard(tops[a], tops[b]))
        for _ in range(200):
            chance.append(jaccard(set(rng.choice(E, k, replace=False)), set(rng.choice(E, k, replace=False))))
    report["specialisation"] = {"top_k": k, "mean_jaccard_between_domains": float(np.mean(overlaps)),
                                "mean_jaccard_random_sets": float(np.mean(chance)), "pairs": len(overlaps)}
    print(f"specialisation: top-{k} Jaccard between domains {np.mean(overlaps):.3f} vs random {np.mean(chance):.3f}",
          flush=True)

    # 3. criteria at 25% and 50%, calibrated on all domains
    criteria = ["reap", "weighted_ean_sum", "frequency", "ean_sum", "ean_mean"]
    report["criteria"] = {}
    for ratio in (0.25, 0.5):
        for criterion in criteria:
            res = summary(evaluate(make_plan(stats_all, ratio, criterion)))
            report["criteria"][f"{criterion}@{ratio}"] = res
            print(f"{criterion:>18} @ {ratio}: {res['accuracy']:.3f} [{res['ci95'][0]:.3f}, {res['ci95'][1]:.3f}] "
                  f"{res['per_domain']}", flush=True)
        pooled = {d: (0, 0) for d in DOMAINS}
        for seed in range(args.random_seeds):
            r = evaluate(make_plan(stats_all, ratio, "random", seed=seed))
            pooled = {d: (pooled[d][0] + r[d][0], pooled[d][1] + r[d][1]) for d in DOMAINS}
        res = summary(pooled)
        res["seeds"] = args.random_seeds
        report["criteria"][f"random@{ratio}"] = res
        print(f"{'random':>18} @ {ratio}: {res['accuracy']:.3f} [{res['ci95'][0]:.3f}, {res['ci95'][1]:.3f}] "
              f"({args.random_seeds} seeds pooled)", flush=True)

    # 4. calibration domain: REAP at 50%, one domain vs all
    report["calibration_domain"] = {"ratio": 0.5, "criterion": "reap",
                                    "all": report["criteria"]["reap@0.5"]["per_domain"]}
    for d, s in per_domain_stats.items():
        res = summary(evaluate(make_plan(s, 0.5, "reap")))
        report["calibration_domain"][d] = res["per_domain"]
        print(f"calibrated on {d:>12}: {res['per_domain']}", flush=True)

    report["seconds"] = time.perf_counter() - start
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"done in {report['seconds']:.0f} s; written to {args.out}")


if __name__ == "__main__":
    main()
