"""The one GPU check: REAP Studio's hot paths beside what a user would otherwise run, in one run.

On one GPU (default sizes, bf16): a real-width Gemma 4 MoE layer stack — hidden 2816, 128 experts
of width 704, top-8, dense MLP 2112, 16 heads x 256 (8 KV heads), `--layers` layers, small
vocabulary — built directly on the device with random weights, batch 8 x 2048 tokens:

  observer  benchmarks/observer_overhead.measure: plain forward with transformers' default experts
            implementation (`grouped_mm`: what a user runs) and as REAP Studio loads it; the
            observing (calibration) forward, its kernel alone, each other kernel forced, observe()
            end to end, and the reference approach (every expert on every token)
  chat      benchmarks/chat_throughput.measure: greedy tokens/s of one pane alone, both panes as two
            separate generations in two threads (the app before batching), both panes in ONE
            batched generate (per-row masks; the pruned pane = 50% of the experts masked)
  export    benchmarks/export_streaming.measure on a real-width checkpoint (`--export-layers`)
  qwen3     the observer section again on a real-width Qwen3-MoE stack (Qwen3-30B-A3B's widths: hidden
            2048, 128 experts of width 768, top-8, 32 heads x 128, 4 KV heads), `--layers` layers

On CPU (`--tiny`, what the test suite runs) the same code at toy sizes. Needs only torch,
transformers, safetensors, huggingface_hub, numpy (no gradio, plotly or datasets).

    bash benchmarks/gpu_check.sh                 # on a GPU machine, < 5 minutes
    bash benchmarks/gpu_check.sh --tiny          # anywhere, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))

import chat_throughput  # noqa: E402
import observer_overhead  # noqa: E402
from reap_core.model import wrap_model  # noqa: E402
from reap_core.plan import plan_from_scores  # noqa: E402
from reap_core.tiny import build_tiny_model, char_tokenizer  # noqa: E402

REAL = dict(hidden=2816, experts=128, top_k=8, expert_width=704, dense_width=2112, heads=16, head_dim=256,
            kv_heads=8, sliding_window=1024)
TINY = dict(hidden=64, experts=16, top_k=4, expert_width=32, dense_width=96, heads=2, head_dim=32, kv_heads=1,
            sliding_window=16)
QWEN3_REAL = dict(hidden=2048, experts=128, top_k=8, expert_width=768, heads=32, head_dim=128, kv_heads=4)
QWEN3_TINY = dict(hidden=64, experts=32, top_k=8, expert_width=32, heads=2, head_dim=32, kv_heads=1)


def section_observer(loaded, args, report) -> None:
    print(f"\n[observer] {loaded.num_layers} layers")
    results = observer_overhead.measure(loaded, args.batch, args.seq, args.repeats)
    base = results["plain, transformers default (grouped_mm)"]
    report["observer"] = {k: {"ms": v * 1000, "ratio_to_default": v / base} for k, v in results.items()}


def section_chat(loaded, args, report) -> None:
    scores = torch.rand(len(loaded.moe_layer_indices), loaded.num_experts,
                        generator=torch.Generator().manual_seed(1)).numpy()
    plan = plan_from_scores(scores, 0.5, loaded.top_k, loaded.moe_layer_indices, criterion="random")
    print("\n[chat] (goal: batched >= 1.7x the two separate generations on CPU, >= 1.9x on a GPU)")
    report["chat"] = chat_throughput.measure(loaded, plan, args.chat_tokens, args.repeats)


def section_qwen3(args, report, device, dtype) -> None:
    sizes = QWEN3_TINY if args.tiny else QWEN3_REAL
    tok = char_tokenizer()
    t = time.perf_counter()
    model = observer_overhead.qwen3_moe_stack(tok, args.layers, dtype=dtype, device=device, **sizes)
    loaded = wrap_model(model, tok, model_id="gpu-check-qwen3-stack")
    params = sum(p.numel() for p in model.parameters())
    print(f"\n[qwen3] Qwen3MoeForCausalLM, {args.layers} layers, hidden {sizes['hidden']}, {sizes['experts']} experts x "
          f"{sizes['expert_width']}, top-{sizes['top_k']}, {params / 1e9:.2f}B parameters, built in "
          f"{time.perf_counter() - t:.1f} s")
    results = observer_overhead.measure(loaded, args.batch, args.seq, args.repeats)
    base = results["plain, transformers default (grouped_mm)"]
    report["qwen3"] = {k: {"ms": v * 1000, "ratio_to_default": v / base} for k, v in results.items()}
    del loaded, model
    if device.type == "cuda":
        torch.cuda.empty_cache()


def section_export(args, report) -> None:
    import export_streaming
    sizes = REAL if not args.tiny else TINY
    print(f"\n[export] streaming export vs copies, {args.export_layers} layers")
    result = export_streaming.measure(layers=args.export_layers, ratio=0.2, shard_gb=1.2,
                                      vocab=args.vocab, folder=args.export_dir, repeats=1, hidden=sizes["hidden"],
                                      experts=sizes["experts"], expert_width=sizes["expert_width"])
    report["export"] = result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="toy sizes (CPU, the test suite)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--seq", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--chat-tokens", type=int, default=None)
    ap.add_argument("--export-layers", type=int, default=None)
    ap.add_argument("--export-dir", default=tempfile.gettempdir())
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--only", action="append", choices=["observer", "chat", "export", "qwen3"])
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    sizes = TINY if args.tiny else REAL
    defaults = dict(layers=2, batch=2, seq=64, repeats=2, chat_tokens=8, export_layers=1) if args.tiny else \
        dict(layers=6, batch=8, seq=2048, repeats=5, chat_tokens=64, export_layers=1)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none"
    print(f"REAP Studio GPU check — {time.strftime('%Y-%m-%d %H:%M')} — device {device} ({gpu}), "
          f"{str(dtype).replace('torch.', '')}, torch {torch.__version__}, "
          f"transformers {__import__('transformers').__version__}, Python {platform.python_version()}, "
          f"{os.cpu_count()} CPU cores")
    report: dict = {"device": str(device), "gpu": gpu, "torch": torch.__version__, "sizes": sizes, "args": vars(args)}
    sections = args.only or ["observer", "chat", "export", "qwen3"]
    failed = []
    t0 = time.perf_counter()
    loaded = None
    if {"observer", "chat"} & set(sections):
        tok = char_tokenizer()
        t = time.perf_counter()
        model = build_tiny_model("causal", vocab_size=len(tok), layers=args.layers, dtype=dtype,
                                 device=device, **sizes)
        loaded = wrap_model(model, tok, model_id="gpu-check-stack")
        params = sum(p.numel() for p in model.parameters())
        print(f"model: Gemma4ForCausalLM, {args.layers} layers, hidden {sizes['hidden']}, {sizes['experts']} experts x "
              f"{sizes['expert_width']}, top-{sizes['top_k']}, {params / 1e9:.2f}B parameters, built in "
              f"{time.perf_counter() - t:.1f} s")
    for name in sections:
        try:
            if name == "observer":
                section_observer(loaded, args, report)
            elif name == "chat":
                section_chat(loaded, args, report)
            elif name == "qwen3":
                loaded = None                   # the Gemma stack's memory back before the Qwen3 one is built
                section_qwen3(args, report, device, dtype)
            else:
                section_export(args, report)
        except Exception:                       # one failed section must not cost the others' figures
            failed.append(name)
            print(f"\n[{name}] FAILED:\n{traceback.format_exc()}")
    if device.type == "cuda":
        print(f"\npeak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    if failed:
        sys.exit(f"failed sections: {', '.join(failed)}")


if __name__ == "__main__":
    main()
