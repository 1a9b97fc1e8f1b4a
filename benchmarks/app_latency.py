"""How long a person waits in REAP Studio, measured side by side in one run (not a test: machines
are noisy; conditions are printed beside every figure).

  (a) start-up   `python app.py` until / answers HTTP 200 (bundled model), then the first
                 /load_model (what demo.load does when the page opens), and where start-up goes
                 (bare imports, each in a fresh interpreter).                     goal ≤ 15 s
  (b) slider     server-side time of `app.on_view` (the handler of every ratio-slider move) on
                 synthetic statistics of 30 layers × 128 experts (Gemma 4 26B-A4B shape, real
                 config-only parameter counts), median of N calls, plus Gradio's Plot
                 serialisation of the figure it returns, and the parts of the handler. goal ≤ 100 ms
  (c) chat       benchmarks/chat_throughput.py on the bundled model: combined tokens/s of one pane
                 alone, both panes as two separate generations, both in one batched generate;
                 greedy, 64 new tokens per pane; median of N runs.

    python benchmarks/app_latency.py                 # all three
    python benchmarks/app_latency.py --only b --calls 40
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
GEMMA4_26B_CONFIG_DIR = ROOT / "tests" / "fixtures" / "gemma-4-26b-a4b-config"


def conditions() -> str:
    import torch

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{platform.machine()} · {os.cpu_count()} CPU cores (load avg {load}) · torch {torch.__version__} "
            f"with {torch.get_num_threads()} threads · python {platform.python_version()}")


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:7.1f} ms"


# --- (a) start-up -----------------------------------------------------------------------------

def bench_startup(runs: int) -> None:
    from gradio_client import Client

    from app_server import running_app

    print("\n(a) start-up: `python app.py` → HTTP 200 on /   [goal ≤ 15 s]")
    print(f"    conditions: {conditions()}; bundled model; GRADIO_ANALYTICS_ENABLED=False")
    ready, first_load = [], []
    for i in range(runs):
        with running_app(timeout=180) as app:
            ready.append(app.startup_seconds)
            client = Client(app.url, verbose=False)
            t0 = time.perf_counter()
            client.predict("toy-gemma4-moe", api_name="/load_model")
            first_load.append(time.perf_counter() - t0)
        verdict = "ok" if ready[-1] <= 15 else "OVER GOAL"
        print(f"    run {i + 1}: ready after {ready[-1]:5.1f} s ({verdict}); first /load_model (bundled, cold) "
              f"{first_load[-1]:4.1f} s")
    print(f"    median ready {statistics.median(ready):.1f} s, median first load {statistics.median(first_load):.1f} s "
          f"→ page usable after ≈ {statistics.median(ready) + statistics.median(first_load):.1f} s")

    print("    where start-up goes (fresh interpreter each; wall time, and CPU time = user+sys, which a busy")
    print("    machine does not inflate much, so it is the better guide to an idle machine):")
    for label, code in [("python -c pass", "pass"),
                        ("import torch", "import torch"),
                        ("import transformers (+ torch)", "import torch, transformers"),
                        ("import gradio", "import gradio"),
                        ("import reap_core modules app.py uses", "import app_imports_probe"),
                        ("import app + build_demo()", "import app; app.build_demo()")]:
        if code == "import app_imports_probe":
            code = ("import reap_core.calibration, reap_core.chat, reap_core.studio, reap_core.viz, "
                    "reap_core.saliency, reap_core.plan, reap_core.toy_tasks")
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        print(f"      {label:42s} wall {wall:5.1f} s   CPU {cpu:5.1f} s")


# --- (b) slider handler -----------------------------------------------------------------------

def synthetic_stats(layers: int = 30, experts: int = 128, top_k: int = 8, categories: int = 4, seed: int = 0):
    from reap_core.stats import ExpertStats

    rng = np.random.default_rng(seed)
    shape = (categories, layers, experts)
    count = rng.integers(0, 2000, size=shape).astype(np.float64)
    count[:, :, :3] = 0                                       # a few never-routed experts, like real data
    gate_sum = count * rng.uniform(0.05, 0.3, size=shape)
    norm_sum = count * rng.uniform(0.5, 5.0, size=shape)
    arrays = dict(count=count, gate_sum=gate_sum, norm_sum=norm_sum,
                  gated_norm_sum=gate_sum * norm_sum / np.maximum(count, 1),
                  norm_max=rng.uniform(1, 20, size=shape), act_max=rng.lognormal(1.0, 1.0, size=shape))
    cats = [f"cat-{i}" for i in range(categories)]
    return ExpertStats(model_id="synthetic-30x128", layer_indices=list(range(layers)), num_experts=experts,
                       top_k=top_k, categories=cats, arrays=arrays,
                       tokens_per_category=[int(count[c].sum() / top_k) for c in range(categories)],
                       calibration={"fingerprint": "synthetic", "samples": 0})


def bench_view(calls: int) -> None:
    import types

    from transformers import AutoConfig

    import app
    from reap_core.plan import make_plan
    from reap_core.saliency import compute_scores
    from reap_core.sizing import count_params
    from reap_core.studio import compression_table
    from reap_core.viz import saliency_heatmap

    print("\n(b) slider: app.on_view, 30 layers × 128 experts, top-8, 4 categories   [goal ≤ 100 ms]")
    print(f"    conditions: {conditions()}; in-process, median of {calls} calls after 2 warm-ups; "
          f"parameter counts from {GEMMA4_26B_CONFIG_DIR.relative_to(ROOT)} (meta device)")
    t0 = time.perf_counter()
    counts = count_params(AutoConfig.from_pretrained(GEMMA4_26B_CONFIG_DIR))
    print(f"    (one-off count_params of the 26B config: {time.perf_counter() - t0:.1f} s, cached per model by the app)")
    fake_loaded = types.SimpleNamespace(model_id="synthetic-30x128")
    app.MODELS.get = lambda model_id, *a, **k: fake_loaded          # no model needed: on_view is statistics only
    app.MODELS.counts = lambda loaded: (counts, "BF16")
    stats = synthetic_stats()
    session = app.Session(model_id="synthetic-30x128", stats=stats)
    plot = next(b for b in app.build_demo().blocks.values()
                if type(b).__name__ == "Plot" and "Saliency heatmap" in str(getattr(b, "label", "")))

    def timed(fn, n=calls):
        fn(), fn()
        times = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times), max(times)

    ratios = iter(np.tile(np.arange(0.05, 0.91, 0.05), 100))
    cases = [("reap, all categories", dict(criterion="reap", protect=False, sort=False, category="all categories")),
             ("reap, sorted rows", dict(criterion="reap", protect=False, sort=True, category="all categories")),
             ("reap, protect super experts", dict(criterion="reap", protect=True, sort=False,
                                                  category="all categories")),
             ("frequency, one category", dict(criterion="frequency", protect=False, sort=False, category="cat-1"))]
    for label, c in cases:
        def handler():
            out = app.on_view(c["criterion"], float(next(ratios)), c["protect"], c["sort"], c["category"], session)
            assert not isinstance(out[1], str) or not out[1].startswith("⚠️"), out[1]
            return out

        med, worst = timed(handler)
        fig = handler()[0]
        ser_med, _ = timed(lambda: plot.postprocess(fig))
        total = med + ser_med
        verdict = "ok" if total <= 0.1 else "OVER GOAL"
        print(f"    {label:30s} handler {fmt_ms(med)} (max {fmt_ms(worst).strip()}) + Plot.postprocess "
              f"{fmt_ms(ser_med)} = {fmt_ms(total)}  {verdict}")

    # the parts of one call (reap, all categories, ratio 0.25)
    cats = None
    parts = [("compression_table", lambda: compression_table(counts, 0.25)),
             ("make_plan", lambda: make_plan(stats, 0.25, "reap", categories=cats)),
             ("compute_scores", lambda: compute_scores(stats, "reap", categories=cats))]
    plan = make_plan(stats, 0.25, "reap")
    scores = compute_scores(stats, "reap")
    parts.append(("saliency_heatmap (figure build)", lambda: saliency_heatmap(stats, scores, "reap", plan)))
    print("    parts of one call:", ", ".join(f"{n} {timed(f)[0] * 1e3:.1f} ms" for n, f in parts))
    payload = plot.postprocess(saliency_heatmap(stats, scores, "reap", plan))
    if payload is not None and hasattr(payload, "plot"):
        print(f"    figure JSON sent to the browser per slider move: {len(payload.plot) / 1e3:.0f} kB")


# --- (c) chat throughput ----------------------------------------------------------------------

def bench_chat(runs: int, tokens: int) -> None:
    """benchmarks/chat_throughput.py on the bundled model (the pruned pane: REAP at ratio 0.5)."""
    import chat_throughput
    from reap_core.calibration import build_calibration
    from reap_core.model import BUNDLED_MODEL, load_model
    from reap_core.observer import observe
    from reap_core.plan import make_plan

    loaded = load_model(BUNDLED_MODEL)
    calib = build_calibration("builtin:toy-math,toy-code", loaded.tokenizer, max_tokens=64, samples_per_category=2)
    plan = make_plan(observe(loaded, calib), 0.5, "reap")
    print(f"\n(c) chat: bundled model ({BUNDLED_MODEL}, {loaded.dtype}, {loaded.device}), pruned pane = REAP at 0.5")
    print(f"    conditions: {conditions()}")
    chat_throughput.measure(loaded, plan, tokens, runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["a", "b", "c"], action="append", help="run only these parts (repeatable)")
    ap.add_argument("--startup-runs", type=int, default=2)
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--chat-runs", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    parts = set(args.only or ["a", "b", "c"])
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    print("REAP Studio latency —", time.strftime("%Y-%m-%d %H:%M"), "—", conditions())
    if "a" in parts:
        bench_startup(args.startup_runs)
    if "b" in parts:
        bench_view(args.calls)
    if "c" in parts:
        bench_chat(args.chat_runs, args.tokens)


if __name__ == "__main__":
    main()
