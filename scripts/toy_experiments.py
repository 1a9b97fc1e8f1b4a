"""The bundled toy model's pruning experiments, as reported in the README (issue: "A small Gemma 4 MoE").

  1. Accuracy before pruning, per domain.
  2. Routing specialisation: per layer, the Jaccard overlap of the top-8 REAP experts of every
     pair of domains (each domain calibrated alone), against two controls: random 8-sets (the
     floor) and the within-domain overlap, two disjoint halves of one domain's calibration samples
     calibrated separately (the ceiling that sampling noise allows). Between-domain overlap is
     reported for the same half-size sets too, so within and between compare like with like.
  3. Criteria at 25% and 50% compression, calibrated on all domains: accuracy with a 95% Wilson
     interval over all items (random: several seeds, pooled).
  4. Calibration domain: REAP at 50% calibrated on one domain vs on all, accuracy per domain.

Everything runs through reap_core (observe -> make_plan -> masked_view -> run_suite), exactly
what the app and the CLI do.

    python scripts/toy_experiments.py [--items 60] [--out runs/toy_experiments.json]
    python scripts/toy_experiments.py --only specialisation      # part 2 alone: no evaluation, ~1 min
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from reap_core.calibration import build_calibration, load_samples, tokenize_samples  # noqa: E402
from reap_core.masking import masked_view  # noqa: E402
from reap_core.model import load_model  # noqa: E402
from reap_core.observer import observe  # noqa: E402
from reap_core.plan import make_plan  # noqa: E402
from reap_core.saliency import compute_scores  # noqa: E402
from reap_core.task_eval import run_suite  # noqa: E402
from reap_core.toy_tasks import DOMAINS  # noqa: E402
from reap_core.vision_eval import wilson  # noqa: E402


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b)


def top_set(stats, row: int, k: int) -> set[int]:
    """The k experts of one layer with the highest REAP score (ties: lower id first)."""
    return set(np.argsort(-compute_scores(stats, "reap")[row], kind="stable")[:k].tolist())


def specialisation(loaded, samples_per_domain: int, k: int = 8, random_draws: int = 200) -> dict:
    """Mean top-k Jaccard overlaps per layer: within a domain (two disjoint halves of its calibration
    samples, observed separately), between domains (full sets, and half sets of the same size as
    the within-domain ones), and between random k-sets."""
    half = samples_per_domain // 2
    full, halves = {}, {}
    for d in DOMAINS:
        samples = load_samples(f"builtin:toy-{d}", samples_per_domain)
        if len(samples) < 2 * half or half < 1:
            raise SystemExit(f"toy-{d}: {len(samples)} calibration samples, need {2 * half}")
        full[d] = observe(loaded, tokenize_samples(samples, loaded.tokenizer, 512, spec=f"builtin:toy-{d}"))
        halves[d] = [observe(loaded, tokenize_samples(part, loaded.tokenizer, 512, spec=f"builtin:toy-{d}/{i}"))
                     for i, part in enumerate((samples[:half], samples[half:2 * half]))]
    rng = np.random.default_rng(0)
    E = loaded.num_experts
    within, between_half, between_full, chance = [], [], [], []
    within_per_domain = {d: [] for d in DOMAINS}
    for row in range(full[DOMAINS[0]].num_layers):
        top_full = {d: top_set(s, row, k) for d, s in full.items()}
        top_half = {d: [top_set(s, row, k) for s in hs] for d, hs in halves.items()}
        for d in DOMAINS:
            j = jaccard(*top_half[d])
            within.append(j)
            within_per_domain[d].append(j)
        for a, b in itertools.combinations(DOMAINS, 2):
            between_full.append(jaccard(top_full[a], top_full[b]))
            between_half.extend(jaccard(x, y) for x in top_half[a] for y in top_half[b])
        for _ in range(random_draws):
            chance.append(jaccard(set(rng.choice(E, k, replace=False)), set(rng.choice(E, k, replace=False))))
    return {"top_k": k, "samples_per_domain": samples_per_domain, "half_size": half,
            "mean_jaccard_within_domain_halves": float(np.mean(within)),
            "mean_jaccard_between_domains_halves": float(np.mean(between_half)),
            "mean_jaccard_between_domains": float(np.mean(between_full)),
            "mean_jaccard_random_sets": float(np.mean(chance)),
            "within_domain_by_domain": {d: float(np.mean(v)) for d, v in within_per_domain.items()},
            "layers": full[DOMAINS[0]].num_layers, "domain_pairs": len(between_full) // full[DOMAINS[0]].num_layers,
            "per_domain_stats": full}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="toy-gemma4-moe")
    ap.add_argument("--items", type=int, default=60, help="eval items per domain")
    ap.add_argument("--samples", type=int, default=32, help="calibration samples per domain")
    ap.add_argument("--random-seeds", type=int, default=3)
    ap.add_argument("--only", choices=["all", "specialisation"], default="all",
                    help="'specialisation': part 2 alone (no evaluation)")
    ap.add_argument("--out", default=None, help="default runs/toy_experiments.json (--only specialisation: "
                                                "runs/toy_specialisation.json)")
    args = ap.parse_args()
    if args.out is None:
        args.out = "runs/toy_specialisation.json" if args.only == "specialisation" else "runs/toy_experiments.json"
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

    # 2. routing specialisation (first: it needs no evaluation)
    spec = specialisation(loaded, args.samples)
    per_domain_stats = spec.pop("per_domain_stats")
    report["specialisation"] = spec
    rows = [(f"within a domain (two disjoint halves of {spec['half_size']} samples)",
             spec["mean_jaccard_within_domain_halves"]),
            (f"between domains ({spec['half_size']}-sample halves, as within)", spec["mean_jaccard_between_domains_halves"]),
            (f"between domains ({args.samples}-sample sets, {spec['domain_pairs']} pairs)",
             spec["mean_jaccard_between_domains"]),
            (f"random {spec['top_k']}-sets of {loaded.num_experts} experts", spec["mean_jaccard_random_sets"])]
    print(f"specialisation: mean Jaccard overlap of the top-{spec['top_k']} REAP experts, "
          f"{spec['layers']} layers", flush=True)
    for label, value in rows:
        print(f"  {label:<52} {value:.3f}", flush=True)
    print("  within, by domain: " + ", ".join(f"{d} {v:.3f}" for d, v in spec["within_domain_by_domain"].items()),
          flush=True)
    if args.only == "specialisation":
        report["seconds"] = time.perf_counter() - start
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1))
        print(f"done in {report['seconds']:.0f} s; written to {args.out}")
        return

    # 1. before pruning
    base = summary(evaluate())
    report["original"] = base
    print(f"original: {base['accuracy']:.3f} {base['per_domain']}", flush=True)

    # calibration on all domains (parts 3 and 4 reuse each domain's own statistics from part 2)
    spec_all = "builtin:" + ",".join(f"toy-{d}" for d in DOMAINS)
    stats_all = observe(loaded, build_calibration(spec_all, loaded.tokenizer, 512, args.samples))

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
