"""Data-parallel calibration: `torchrun --nproc-per-node N` against one process, side by side in one run.

A random Gemma 4 MoE stack is saved to a temporary folder with a calibration file of random-text
samples; then the same `python -m reap_core calibrate` runs as one process (all the machine's
threads) and under torchrun with N ranks (threads split between them: gloo on CPU, nccl on GPUs),
each twice. Printed: wall time of the whole command (start-up and model load included), the
calibration time rank 0 reports, tokens/s, and whether the two statistics files agree (counts
exactly; sums to 1e-6 relative, since thread counts change float32 matmul rounding).

    python benchmarks/calibration_ranks.py                 # CPU: 2 ranks vs 1 process
    python benchmarks/calibration_ranks.py --ranks 4 --samples 256
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from reap_core.stats import ExpertStats  # noqa: E402
from reap_core.tiny import build_tiny_model, char_tokenizer  # noqa: E402


def run(cmd: list[str], env: dict) -> tuple[float, float, str]:
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t
    if out.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    match = re.search(r"observed (\d+) tokens in ([\d.]+) s", out.stdout)
    return wall, float(match.group(2)), match.group(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=256, help="characters (= tokens) per sample")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    threads = os.cpu_count() or 1
    tok = char_tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        model = build_tiny_model("causal", vocab_size=len(tok), hidden=256, layers=4, experts=64, top_k=8,
                                 expert_width=128, dense_width=512, heads=4, head_dim=64, sliding_window=128)
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        rng = random.Random(0)
        words = ["alpha", "beta", "gamma", "delta", "def", "return", "12", "+", "=", "the", "of", "expert"]
        data = Path(tmp) / "calib.jsonl"
        data.write_text("\n".join(json.dumps({"text": " ".join(rng.choice(words) for _ in range(args.tokens))[:args.tokens],
                                              "category": f"c{i % 4}"}) for i in range(args.samples)))
        common = ["calibrate", "--model", str(folder), "--calibration", str(data), "--batch-size", str(args.batch_size),
                  "--max-tokens", str(args.tokens)]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
        single = [sys.executable, "-m", "reap_core", *common, "--out", f"{tmp}/one.npz"]
        ranks = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(args.ranks), "--master-port",
                 "29533", "-m", "reap_core", *common, "--out", f"{tmp}/ranks.npz"]
        rank_env = {**env, "OMP_NUM_THREADS": str(max(1, threads // args.ranks))}
        print(f"conditions: {threads} CPU cores, torch {torch.__version__}, Gemma 4 stack (4 layers, hidden 256, "
              f"64 experts x 128, top-8), {args.samples} samples x {args.tokens} tokens, batch {args.batch_size}, "
              f"load average {os.getloadavg()[0]:.1f}")
        results = {"one process": [], f"torchrun, {args.ranks} ranks": []}
        for _ in range(args.repeats):      # interleaved, so a noisy moment hits both
            results["one process"].append(run(single, env))
            results[f"torchrun, {args.ranks} ranks"].append(run(ranks, rank_env))
        base = None
        for name, runs in results.items():
            wall = min(r[0] for r in runs)
            calib = min(r[1] for r in runs)
            tokens = int(runs[0][2])
            base = base or (wall, calib)
            print(f"  {name:<22} command {wall:6.1f} s ({base[0] / wall:4.2f}x)   calibration {calib:6.1f} s "
                  f"({tokens / calib:7.0f} tokens/s, {base[1] / calib:4.2f}x)   best of {len(runs)}")
        one, many = ExpertStats.load(f"{tmp}/one.npz"), ExpertStats.load(f"{tmp}/ranks.npz")
        same_counts = np.array_equal(one.arrays["count"], many.arrays["count"])
        worst = max(float(np.max(np.abs(one.arrays[k] - many.arrays[k]) / np.maximum(np.abs(one.arrays[k]), 1e-30)))
                    for k in one.arrays if k != "count")
        print(f"  statistics: counts identical {same_counts}; largest relative difference of the other statistics "
              f"{worst:.1e}")


if __name__ == "__main__":
    main()
