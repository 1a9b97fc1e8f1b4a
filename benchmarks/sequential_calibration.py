"""Layer-by-layer calibration against the one-pass observer: peak memory and time, side by side in one run.

A random Gemma 4 MoE stack is saved as a BF16 safetensors checkpoint; each variant then runs in its
own child process (so each peak RSS is its own): load + calibrate the same samples with the same
batches, statistics written to a file. Printed per variant: peak RSS of the child (and of it the
anonymous memory, sampled every 20 ms: what the process needs, where RSS also counts file pages it
maps), RSS after imports, load and calibration time; and the goal ratios: sequential peak / (one
layer + one batch of hidden states + what imports cost), sequential time / one-pass time (goal <=
1.3x when the model fits), statistics identical. Then the export of REAP 50% from those statistics
verified the full-copy way (the source loaded, the export reloaded) against layer by layer.

    python benchmarks/sequential_calibration.py               # 8 layers, hidden 1024, 64 experts x 512
    python benchmarks/sequential_calibration.py --layers 4 --hidden 2816 --experts 128 --expert-width 704
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHILD = r"""
import json, sys, time, random
sys.path.insert(0, sys.argv[1])
import threading
def status(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key + ":"))
def rss():   # VmHWM: this process's own peak (ru_maxrss would include the parent's from before the fork)
    return status("VmHWM")
peak_anon = [0]
def sample():   # anonymous memory is what the process needs; file pages it maps (safetensors) can be dropped
    while True:
        peak_anon[0] = max(peak_anon[0], status("RssAnon"))
        time.sleep(0.02)
threading.Thread(target=sample, daemon=True).start()
import torch
from reap_core.calibration import CalibrationSet
from reap_core.model import load_model
from reap_core.observer import observe
from reap_core.sequential import load_offloaded, observe_sequential
after_imports = rss()
folder, mode, out, samples, tokens, batch = sys.argv[2], sys.argv[3], sys.argv[4], *map(int, sys.argv[5:8])
rng = random.Random(0)
ids = [[rng.randrange(10, 100) for _ in range(tokens)] for _ in range(samples)]
calib = CalibrationSet(spec="random", token_ids=ids, category_ids=[i % 2 for i in range(samples)],
                       categories=["a", "b"], max_tokens=tokens)
t = time.perf_counter()
if mode == "sequential":
    loaded, offload = load_offloaded(folder, dtype="float32")
elif mode == "one":
    loaded = load_model(folder, dtype="float32")
loaded_at = time.perf_counter()
if mode.startswith("verify"):         # export the stats file given as `out`, verified one way or the other
    from reap_core.export import export_pruned
    from reap_core.plan import make_plan
    from reap_core.stats import ExpertStats
    stats = ExpertStats.load(out)
    loaded_at = time.perf_counter()
    export_pruned(folder, make_plan(stats, 0.5), stats, out + "-" + mode, streaming=True,
                  verify="layerwise" if mode == "verify-layerwise" else True)
    done = time.perf_counter()
else:
    stats = (observe_sequential if mode == "sequential" else observe)(loaded, calib, batch_size=batch)
    done = time.perf_counter()
    stats.save(out)
print(json.dumps({"peak_rss": rss(), "peak_anon": peak_anon[0], "after_imports": after_imports, "load_s": loaded_at - t,
                  "calibrate_s": done - loaded_at}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--experts", type=int, default=64)
    ap.add_argument("--expert-width", type=int, default=512)
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--folder", default=tempfile.gettempdir())
    args = ap.parse_args()
    from reap_core.stats import ExpertStats
    from reap_core.tiny import build_tiny_model, char_tokenizer

    tok = char_tokenizer()
    with tempfile.TemporaryDirectory(dir=args.folder, prefix="reap-seq-bench-") as tmp:
        folder = Path(tmp) / "model"
        model = build_tiny_model("causal", vocab_size=len(tok), hidden=args.hidden, layers=args.layers,
                                 experts=args.experts, top_k=args.top_k, expert_width=args.expert_width,
                                 dense_width=args.hidden * 2, heads=8, head_dim=args.hidden // 8, sliding_window=512,
                                 dtype=torch.bfloat16)
        layer_bytes = sum(p.numel() for p in model.model.layers[0].parameters()) * 4     # float32 on the CPU
        total = sum(p.numel() for p in model.parameters())
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        del model
        hidden_bytes = args.batch_size * args.tokens * args.hidden * 4
        all_hidden = args.samples * args.tokens * args.hidden * 4
        print(f"conditions: {os.cpu_count()} CPU cores, torch {torch.__version__}, float32 compute from a BF16 "
              f"checkpoint; Gemma 4 stack, {args.layers} layers, hidden {args.hidden}, {args.experts} experts x "
              f"{args.expert_width}, top-{args.top_k}: {total / 1e9:.2f}B parameters = {total * 4 / 1e9:.2f} GB in "
              f"float32, one decoder layer {layer_bytes / 1e9:.2f} GB; {args.samples} samples x {args.tokens} tokens, "
              f"batch {args.batch_size}; load average {os.getloadavg()[0]:.1f}")
        results = {}
        for mode in ("one pass", "sequential"):
            out = Path(tmp) / f"{mode.replace(' ', '-')}.npz"       # one-pass.npz is exported below
            run = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), str(folder), mode.split()[0], str(out),
                                  str(args.samples), str(args.tokens), str(args.batch_size)],
                                 capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if run.returncode != 0:
                sys.exit(f"{mode} failed:\n{run.stderr[-3000:]}")
            results[mode] = json.loads(run.stdout.strip().splitlines()[-1])
            results[mode]["stats"] = ExpertStats.load(out)
        for mode, r in results.items():
            print(f"  {mode:<11} peak RSS {r['peak_rss'] / 1e9:5.2f} GB, of it anonymous {r['peak_anon'] / 1e9:5.2f} GB "
                  f"(after imports {r['after_imports'] / 1e9:.2f} GB)"
                  f"   load {r['load_s']:5.1f} s   calibration {r['calibrate_s']:6.1f} s")
        one, seq = results["one pass"], results["sequential"]
        budget = layer_bytes + hidden_bytes + all_hidden + seq["after_imports"]
        same = all(np.array_equal(one["stats"].arrays[k], seq["stats"].arrays[k]) for k in one["stats"].arrays)
        print(f"  sequential peak / one pass peak: RSS {seq['peak_rss'] / one['peak_rss']:.2f}x, anonymous "
              f"{seq['peak_anon'] / one['peak_anon']:.2f}x")
        print(f"  sequential peak / (one layer {layer_bytes / 1e9:.2f} GB + one batch {hidden_bytes / 1e9:.3f} GB + the "
              f"calibration's hidden states {all_hidden / 1e9:.3f} GB + imports): RSS {seq['peak_rss'] / budget:.2f}x, "
              f"anonymous {seq['peak_anon'] / budget:.2f}x (goal <= 1.5x; the RSS peak is while transformers reads the "
              f"checkpoint at load, file pages the kernel can drop)")
        print(f"  sequential / one-pass calibration time: {seq['calibrate_s'] / one['calibrate_s']:.2f}x (goal <= 1.3x); "
              f"with loading: {(seq['calibrate_s'] + seq['load_s']) / (one['calibrate_s'] + one['load_s']):.2f}x")
        print(f"  statistics identical: {same}")
        print("export of REAP 50% (streaming) with its verification, each in its own child process:")
        verify = {}
        for mode in ("verify-full", "verify-layerwise"):
            run = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), str(folder), mode,
                                  str(Path(tmp) / "one-pass.npz"), str(args.samples), str(args.tokens),
                                  str(args.batch_size)], capture_output=True, text=True,
                                 env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if run.returncode != 0:
                sys.exit(f"{mode} failed:\n{run.stderr[-3000:]}")
            verify[mode] = r = json.loads(run.stdout.strip().splitlines()[-1])
            print(f"  {mode:<17} peak RSS {r['peak_rss'] / 1e9:5.2f} GB, of it anonymous {r['peak_anon'] / 1e9:5.2f} GB"
                  f"   export + verification {r['calibrate_s']:6.1f} s")
        full, layered = verify["verify-full"], verify["verify-layerwise"]
        print(f"  layer by layer / full copy: peak anonymous memory {layered['peak_anon'] / full['peak_anon']:.2f}x, "
              f"peak RSS {layered['peak_rss'] / full['peak_rss']:.2f}x, time {layered['calibrate_s'] / full['calibrate_s']:.2f}x")


if __name__ == "__main__":
    main()
