"""Streaming export vs a plain copy, measured side by side in one run, per byte written and per byte read.

A synthetic Gemma 4 text checkpoint with the real MoE layer width (hidden 2816, 128 experts of
width 704, top-8; the key names and shapes of the transformers Gemma 4 text model built on the
meta device, attention and vocabulary smaller than the real one) and a few layers is written in
BF16 to a temp dir, in shards of >= 1 GB. Then, each in its own child process (so peak memory is
that process's alone), interleaved twice:
  export   reap_core.export.export_pruned(streaming=True, verify=False) at ratio 0.2 (128 -> 103):
           reads the kept tensor bytes of the source once and writes them once
  copy     shutil.copyfile (sendfile on Linux) of the export's OWN output shards: the same bytes
           read and written once — the fair baseline for what the export has to move
  copy src shutil.copyfile of every source shard (all source bytes, for scale)
Reported: wall time of the work (imports excluded) — for the export cumulatively at the end of its
plan (safetensors headers, sizes from the config), of its weights and of the whole folder (scores,
statistics, heatmap, card) — throughput per GB written and per GB read (read = source tensor bytes
the export copies = the tensor bytes it writes; plus the source size per second, what a user sees),
their ratio to the copy of the same bytes (goal >= 0.5x), and peak RSS of the export relative to
the largest shard (goal <= 1.5x). Page cache warm (the source was just written); os.sync() before
each run; everything is deleted at the end.

    python benchmarks/export_streaming.py               # 2 layers, 3.4 GB; needs ~8 GB free in /tmp
    python benchmarks/export_streaming.py --layers 3    # ~5 GB, ~11 GB free
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def rss_mb() -> float:
    """Peak RSS of this process image (VmHWM). Not getrusage's ru_maxrss: on Linux a child started by
    fork + exec inherits the parent's high-water mark in ru_maxrss, which here is the ~2 GB the
    parent used to write the synthetic shards."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024                         # kB
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# --- children ---------------------------------------------------------------------------------

def child_copy(src: Path, dst: Path, kernel_range_copy: bool = False) -> dict:
    """shutil.copyfile (sendfile on Linux), or os.copy_file_range: the primitive the export uses."""
    dst.mkdir()
    start = time.perf_counter()
    for f in sorted(src.glob("*.safetensors")):
        if not kernel_range_copy:
            shutil.copyfile(f, dst / f.name)
            continue
        with open(f, "rb") as r, open(dst / f.name, "wb") as w:
            left, offset = f.stat().st_size, 0
            while left:
                n = os.copy_file_range(r.fileno(), w.fileno(), min(left, 16 * 2**20), offset)
                offset, left = offset + n, left - n
    return {"seconds": time.perf_counter() - start, "peak_rss_mb": rss_mb()}


def child_export(src: Path, dst: Path, ratio: float) -> dict:
    import numpy as np
    import torch

    from reap_core.export import export_pruned
    from reap_core.model import load_config
    from reap_core.plan import plan_from_scores
    from reap_core.stats import SUM_STATS, MAX_STATS, ExpertStats

    torch.set_num_threads(1)
    config = load_config(str(src))
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers, experts, top_k = text.num_hidden_layers, text.num_experts, text.top_k_experts
    rng = np.random.default_rng(0)
    arrays = {k: rng.random((1, layers, experts)) * 100 for k in SUM_STATS + MAX_STATS}
    stats = ExpertStats(model_id=str(src), layer_indices=list(range(layers)), num_experts=experts, top_k=top_k,
                        categories=["synthetic"], arrays=arrays, tokens_per_category=[4096],
                        calibration={"spec": "synthetic", "fingerprint": "synthetic", "max_tokens": 512,
                                     "samples": 8, "summary": {"synthetic": {"samples": 8, "tokens": 4096}}})
    plan = plan_from_scores(stats.total("count"), ratio, top_k, stats.layer_indices, criterion="frequency")
    baseline = current_rss_mb()
    marks = {}

    def progress(fraction, message):
        if message.startswith("writing weights") and "plan" not in marks:   # the first piece is written
            marks["plan"] = time.perf_counter()
        if fraction >= 0.8 and "weights" not in marks:
            marks["weights"] = time.perf_counter()

    start = time.perf_counter()
    result = export_pruned(str(src), plan, stats, dst, streaming=True, verify=False, progress=progress)
    end = time.perf_counter()
    weight_bytes = sum(f.stat().st_size for f in Path(dst).glob("*.safetensors"))
    return {"seconds": end - start, "weights_seconds": marks.get("weights", end) - start,
            "plan_seconds": marks.get("plan", end) - start, "peak_rss_mb": rss_mb(),
            "rss_after_imports_mb": baseline, "bytes": result.bytes, "weight_bytes": weight_bytes,
            "kept": plan.num_kept}


def run_child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- the synthetic checkpoint -----------------------------------------------------------------

def write_checkpoint(folder: Path, layers: int, shard_bytes: int, vocab: int, hidden: int = 2816, experts: int = 128,
                     expert_width: int = 704) -> list[int]:
    """Real Gemma 4 key names and shapes (meta-device model), random BF16 values, >= 1 GB shards."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, Gemma4TextConfig

    from reap_core.shards import natural_key
    from reap_core.tiny import tiny_text_config

    cfg = tiny_text_config(vocab_size=vocab, hidden=hidden, layers=layers, experts=experts, top_k=min(8, experts // 2),
                           expert_width=expert_width, dense_width=hidden * 3 // 4, heads=16, head_dim=256 if hidden >= 2816 else 16,
                           sliding_window=1024, kv_heads=8)
    config = Gemma4TextConfig(**cfg)
    config.dtype = "bfloat16"
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied
    folder.mkdir(parents=True)
    config.save_pretrained(folder)
    groups, size = [[]], 0
    for name in sorted(shapes, key=natural_key):
        nbytes = 2 * int(torch.Size(shapes[name]).numel())
        if groups[-1] and size + nbytes > shard_bytes and size >= 10**9:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    weight_map, sizes = {}, []
    gen = torch.Generator().manual_seed(0)
    for i, names in enumerate(groups):
        file = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {n: torch.randn(shapes[n], generator=gen, dtype=torch.bfloat16) for n in names}
        save_file(tensors, folder / file, metadata={"format": "pt"})
        del tensors
        weight_map.update({n: file for n in names})
        sizes.append((folder / file).stat().st_size)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": sum(sizes)},
                                                                     "weight_map": weight_map}))
    return sizes


def measure(layers: int = 2, ratio: float = 0.2, shard_gb: float = 1.2, vocab: int = 32768,
            folder: str = tempfile.gettempdir(), repeats: int = 2, hidden: int = 2816, experts: int = 128,
            expert_width: int = 704, cores: str | None = None) -> dict:
    """Write the synthetic checkpoint, run export and copies `repeats` times interleaved, print the
    table, delete everything; returns the figures (gpu_check.py uses this too)."""
    free = shutil.disk_usage(folder).free
    need = layers * (hidden * experts * expert_width * 6 * 1.05) * 2 + 1e9
    if free < need:
        raise SystemExit(f"need ~{need / 1e9:.0f} GB free in {folder}, have {free / 1e9:.0f} GB")
    work = Path(tempfile.mkdtemp(prefix="reap-export-bench-", dir=folder))
    try:
        t = time.perf_counter()
        sizes = write_checkpoint(work / "source", layers, int(shard_gb * 1e9), vocab, hidden, experts, expert_width)
        total, largest = sum(sizes), max(sizes)
        print(f"synthetic Gemma 4 text checkpoint: {layers} layers, hidden {hidden}, {experts} experts x width "
              f"{expert_width}, vocab {vocab}, BF16; {len(sizes)} shards of {', '.join(f'{s / 1e9:.2f}' for s in sizes)} "
              f"GB = {total / 1e9:.2f} GB (written in {time.perf_counter() - t:.0f} s)")
        print(f"conditions: {cores or os.cpu_count()} CPU cores, torch threads 1 in the export child, page cache warm "
              f"(source just written), os.sync() before each run, no fsync inside, filesystem of {folder}; "
              f"export ratio {ratio} with verify=False (weights, config, card, recipe, scores, heatmap)")
        runs: dict[str, list[dict]] = {"export": [], "copy of the bytes written": [], "copy of the source": []}
        for _ in range(repeats):             # interleaved: drift hits every variant alike
            out, again = work / "out", work / "out-copy"
            os.sync()
            runs["export"].append(run_child("export", str(work / "source"), str(out), str(ratio)))
            os.sync()
            runs["copy of the bytes written"].append(run_child("copyfile", str(out), str(again)))
            os.sync()
            shutil.rmtree(again)
            runs["copy of the source"].append(run_child("copyfile", str(work / "source"), str(again)))
            shutil.rmtree(again)
            shutil.rmtree(out)
        mean = lambda rs, k="seconds": sum(r[k] for r in rs) / len(rs)  # noqa: E731
        exports = runs["export"]
        written = exports[0]["weight_bytes"]
        copy_written, copy_source = mean(runs["copy of the bytes written"]), mean(runs["copy of the source"])
        print()
        print(f"{'':40}{'seconds':>9}{'GB written/s':>14}{'GB read/s':>11}{'source GB/s':>13}{'vs copy of written':>20}")
        for i, c in enumerate(runs["copy of the bytes written"]):
            print(f"{f'copy of the bytes written, run {i + 1}':40}{c['seconds']:9.2f}{written / 1e9 / c['seconds']:14.2f}"
                  f"{written / 1e9 / c['seconds']:11.2f}")
        for i, c in enumerate(runs["copy of the source"]):
            print(f"{f'copy of the source, run {i + 1}':40}{c['seconds']:9.2f}{total / 1e9 / c['seconds']:14.2f}"
                  f"{total / 1e9 / c['seconds']:11.2f}")
        for i, e in enumerate(exports):
            print(f"{f'streaming export, run {i + 1}: plan':40}{e['plan_seconds']:9.2f}"
                  f"   (headers, sizes: until the first weight bytes)")
            for part, sec in (("weights", e["weights_seconds"]), ("folder", e["seconds"])):
                print(f"{f'streaming export, run {i + 1}: {part}':40}{sec:9.2f}{written / 1e9 / sec:14.2f}"
                      f"{written / 1e9 / sec:11.2f}{total / 1e9 / sec:13.2f}{copy_written / sec:19.2f}x")
        print(f"  bytes: the export read and wrote {written / 1e9:.2f} GB of tensor data ({exports[0]['kept']} of "
              f"{experts} experts kept per layer) out of a {total / 1e9:.2f} GB source; 'vs copy of written' = mean "
              f"copy time of those same bytes ({copy_written:.2f} s) / export time (goal >= 0.5x)")
        export = max(exports, key=lambda e: e["peak_rss_mb"])
        peak = export["peak_rss_mb"] * 2**20
        print(f"peak RSS of the export child      {peak / 1e9:6.2f} GB = {peak / largest:.2f}x the largest shard "
              f"({largest / 1e9:.2f} GB)   (goal <= 1.5x); after imports (torch, transformers) "
              f"{export['rss_after_imports_mb'] * 2**20 / 1e9:.2f} GB")
        best = min(exports, key=lambda e: e["seconds"])
        return {"source_bytes": total, "written_bytes": written, "export_seconds": best["seconds"],
                "export_weights_seconds": best["weights_seconds"], "copy_written_seconds": copy_written,
                "copy_source_seconds": copy_source, "peak_rss_over_largest_shard": peak / largest}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, src, dst = sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
        result = child_export(src, dst, float(sys.argv[5])) if kind == "export" else \
            child_copy(src, dst, kernel_range_copy=kind == "copy_file_range")
        print(json.dumps(result))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--ratio", type=float, default=0.2)
    ap.add_argument("--shard-gb", type=float, default=1.2, help="target shard size (>= 1 GB each)")
    ap.add_argument("--vocab", type=int, default=32768, help="vocabulary (the real 262144 adds 1.5 GB of embeddings)")
    ap.add_argument("--dir", default=tempfile.gettempdir())
    args = ap.parse_args()
    measure(args.layers, args.ratio, args.shard_gb, args.vocab, args.dir)


if __name__ == "__main__":
    main()
