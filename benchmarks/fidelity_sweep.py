"""Cost of a fidelity sweep (fidelity.run_fidelity_sweep) beside plain forward passes, in one run.

  plain pass   one forward over the whole held-out set, no mask, computing log-probs only where
               the sweep scores (logits_to_keep + the scored positions, as the sweep does): the
               unit the sweep is measured in; timed 3x before and 3x after the sweep (drift and
               other jobs on the machine hit both), median reported
  sweep        ratios x criteria points from ONE calibration, by per-row masked views: each
               forward holds one held-out sequence under up to `batch` plans (the original's row
               first), so a sweep of P distinct plans is P + 1 passes over the held-out set

Claim checked: one sweep point costs about one plain pass (ratio per point ~1.0), and 9 ratios x
4 criteria on the bundled model finish in under 2 minutes on a 2-core CPU.

    python benchmarks/fidelity_sweep.py                       # bundled model, 9 ratios x 4 criteria
    python benchmarks/fidelity_sweep.py --html sweep.html     # also write the Plotly figure
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from reap_core import fidelity as fid  # noqa: E402
from reap_core.calibration import build_calibration  # noqa: E402
from reap_core.heldout import HeldOut, build_heldout, calibration_exclusion  # noqa: E402
from reap_core.masking import masked_view  # noqa: E402
from reap_core.model import load_model  # noqa: E402
from reap_core.observer import observe  # noqa: E402
from reap_core.viz import fidelity_figure  # noqa: E402


@torch.inference_mode()
def plain_pass(loaded, heldout: HeldOut, batch_size: int) -> tuple[float, float]:
    """(wall, process CPU) seconds of one forward over the held-out set, log-probs where scored."""
    t0, c0 = time.perf_counter(), time.process_time()
    with masked_view(loaded, None):
        for ids, attn, keep, _, score in fid.heldout_batches(heldout, batch_size, loaded.tokenizer.pad_token_id or 0):
            fid._log_probs(loaded, ids, attn, keep, score)
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="toy-gemma4-moe")
    ap.add_argument("--calibration", default="builtin:toy-*")
    ap.add_argument("--samples-per-category", type=int, default=16)
    ap.add_argument("--heldout", default="toy", help="toy[:N] | gemma4-bench | a calibration spec")
    ap.add_argument("--per-domain", type=int, default=8)
    ap.add_argument("--ratios", default=",".join(str(r) for r in fid.DEFAULT_RATIOS))
    ap.add_argument("--criteria", default=",".join(fid.DEFAULT_CRITERIA))
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--html", help="write the KL figure here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    loaded = load_model(args.model)
    calib = build_calibration(args.calibration, loaded.tokenizer, max_tokens=256,
                              samples_per_category=args.samples_per_category)
    t0 = time.perf_counter()
    stats = observe(loaded, calib, batch_size=8, top_tokens_per_expert=0)
    t_cal = time.perf_counter() - t0
    heldout = build_heldout(args.heldout, loaded.tokenizer, calibration_exclusion(calib, loaded.tokenizer),
                            per_category=args.per_domain)
    ratios = [float(r) for r in args.ratios.split(",")]
    criteria = [c.strip() for c in args.criteria.split(",")]
    h = heldout.describe()
    print(f"model {args.model}: {loaded.num_layers} layers, {loaded.num_experts} experts top-{loaded.top_k}, "
          f"vocab {loaded.config.vocab_size}, {str(loaded.dtype).replace('torch.', '')}, CPU, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, {platform.processor() or platform.machine()}")
    print(f"calibration {args.calibration}: {len(calib.token_ids)} samples, {calib.num_tokens} tokens, "
          f"observed in {t_cal:.1f} s")
    print(f"held-out {h['source']}: {h['sequences']} sequences, "
          f"{sum(len(t) for t in heldout.token_ids)} tokens, {h['scored_tokens']} scored ({h['positions']}), "
          f"{h['excluded']} calibration samples excluded; batch {args.batch_size}")
    print(f"load average before: {os.getloadavg()[0]:.1f}")

    plain_pass(loaded, heldout, args.batch_size)  # warm-up
    plain = [plain_pass(loaded, heldout, args.batch_size) for _ in range(3)]
    t0, c0 = time.perf_counter(), time.process_time()
    result = fid.run_fidelity_sweep(loaded, stats, heldout, ratios, criteria, batch_size=args.batch_size)
    t_sweep, c_sweep = time.perf_counter() - t0, time.process_time() - c0
    plain += [plain_pass(loaded, heldout, args.batch_size) for _ in range(3)]
    t = result.timing
    points = t["unique_plans"]
    n = torch.get_num_threads()
    print(f"load average after:  {os.getloadavg()[0]:.1f}")
    print("\nwall = elapsed seconds (inflated by other jobs on a shared machine); CPU = this process's CPU")
    print(f"seconds, robust to other jobs; CPU / {n} threads = the wall time to expect on an idle {n}-core CPU\n")
    print(f"{'':36} {'wall s':>8} {'x plain':>8} {'CPU s':>8} {'x plain':>8} {f'CPU/{n}':>7}")
    pw, pc = statistics.median(w for w, _ in plain), statistics.median(c for _, c in plain)
    passes = points + 1
    rows = [("plain pass (median of 6)", pw, pc),
            ("one sweep pass (mean of plans + original)", t["seconds_measuring"] / passes,
             t["cpu_seconds_measuring"] / passes),
            (f"sweep {len(ratios)} ratios x {len(criteria)} criteria", t_sweep, c_sweep)]
    for name, w, c in rows:
        print(f"{name:36} {w:8.2f} {w / pw:8.2f} {c:8.2f} {c / pc:8.2f} {c / n:7.1f}")
    print(f"\nthe sweep = {points} distinct plans + the original = {passes} passes over the held-out set in "
          f"{t['forwards']} forwards of up to {args.batch_size} rows; sweep / ({passes} plain passes): "
          f"wall {t_sweep / (pw * passes):.2f}x, CPU {c_sweep / (pc * passes):.2f}x")
    print(f"plain pass wall min {min(w for w, _ in plain):.2f} s, max {max(w for w, _ in plain):.2f} s")
    print(f"under 2 minutes: wall {t_sweep:.0f} s, idle-{n}-core estimate {c_sweep / n:.0f} s")
    print()
    print(result.format_table("kl"))
    print()
    print(result.format_table("top1"))
    print()
    print(result.format_table("ppl_ratio"))
    print(f"\noriginal perplexity on the scored tokens: {result.original_ppl:.3f}")
    if args.html:
        fidelity_figure(result, "kl", current_ratio=0.3).write_html(args.html)
        print(f"figure written to {args.html}")


if __name__ == "__main__":
    main()
