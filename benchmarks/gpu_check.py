"""The one GPU check: REAP Studio's hot paths beside what a user would otherwise run, in one run.

On one GPU (default sizes, bf16): a real-width Gemma 4 MoE layer stack — hidden 2816, 128 experts
of width 704, top-8, dense MLP 2112, 16 heads x 256 (8 KV heads), `--layers` layers, small
vocabulary — built directly on the device with random weights, batch 8 x 2048 tokens:

  observer  plain forward with transformers' default experts implementation for the device
            (`grouped_mm`: what a user runs) and with the one REAP Studio loads (adapter.prepare);
            the calibration forward (observer.observe, kernel chosen per device) and the same with
            each observer kernel forced; the reference implementation's approach (every expert on
            every token, statistics from all of them) — each the median of --repeats, synchronised
  chat      greedy tokens/s: one pane alone; both panes as two separate generations in two threads
            (the app before batching); both panes in ONE batched generate (chat.stream_variants,
            per-row masks; the pruned pane = 50% of the experts masked)
  export    benchmarks/export_streaming.measure on a real-width checkpoint (`--export-layers`)

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
import statistics
import sys
import tempfile
import threading
import time
import traceback
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))

from reap_core.adapters import kernels  # noqa: E402
from reap_core.calibration import CalibrationSet  # noqa: E402
from reap_core.chat import GenerationSettings, build_inputs, stream_variants  # noqa: E402
from reap_core.masking import masked_view  # noqa: E402
from reap_core.model import wrap_model  # noqa: E402
from reap_core.observer import observe  # noqa: E402
from reap_core.plan import plan_from_scores  # noqa: E402
from reap_core.tiny import build_tiny_model, char_tokenizer  # noqa: E402

REAL = dict(hidden=2816, experts=128, top_k=8, expert_width=704, dense_width=2112, heads=16, head_dim=256,
            kv_heads=8, sliding_window=1024)
TINY = dict(hidden=64, experts=16, top_k=4, expert_width=32, dense_width=96, heads=2, head_dim=32, kv_heads=1,
            sliding_window=16)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats: int) -> list[float]:
    fn()                                   # warm-up (kernels, caches)
    out = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t)
    return out


def all_experts_forward(self, hidden_states, top_k_index, top_k_weights):
    """The reference implementation's approach: every expert computes every token ([E, T, H]),
    statistics reduced from all of them, the routed outputs combined."""
    gate, up = torch.einsum("th,eoh->eto", hidden_states, self.gate_up_proj).chunk(2, dim=-1)
    out = torch.einsum("eti,ehi->eth", self.act_fn(gate) * up, self.down_proj)       # [E, T, H]
    self._ref_sink = out.float().norm(dim=-1).sum(dim=1)                             # a statistic for all
    tokens = torch.arange(hidden_states.shape[0], device=hidden_states.device).unsqueeze(1).expand_as(top_k_index)
    return (out[top_k_index, tokens] * top_k_weights.unsqueeze(-1).to(out.dtype)).sum(dim=1).to(hidden_states.dtype)


def section_observer(loaded, args, device, report) -> None:
    model, adapter = loaded.model, loaded.adapter
    B, T = args.batch, args.seq
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(10, len(loaded.tokenizer), (B, T), generator=gen)
    calib = CalibrationSet(spec="random tokens", token_ids=ids.tolist(), category_ids=[0] * B, categories=["random"],
                           max_tokens=T)
    ids_dev, mask_dev = ids.to(device), torch.ones_like(ids).to(device)
    loaded_impl = getattr(model.config, "_experts_implementation", None) or "grouped_mm"

    def plain(impl):
        def run():
            model.set_experts_implementation(impl)
            with torch.inference_mode():
                model.model(input_ids=ids_dev, attention_mask=mask_dev, use_cache=False)
        return run

    def calibrate(kernel=None):
        def run():
            model.set_experts_implementation(loaded_impl)
            old = os.environ.pop("REAP_OBSERVER_KERNEL", None)
            if kernel:
                os.environ["REAP_OBSERVER_KERNEL"] = kernel
            try:
                observe(loaded, calib, batch_size=B)
            finally:
                os.environ.pop("REAP_OBSERVER_KERNEL", None)
                if old is not None:
                    os.environ["REAP_OBSERVER_KERNEL"] = old
        return run

    def reference():
        model.set_experts_implementation(loaded_impl)
        experts = [layer.experts for _, layer in adapter.moe_layers(model)]
        for ex in experts:
            ex.forward = types.MethodType(all_experts_forward, ex)
        try:
            with torch.inference_mode():
                model.model(input_ids=ids_dev, attention_mask=mask_dev, use_cache=False)
        finally:
            for ex in experts:
                del ex.forward

    auto = kernels.observer_kernel_name(device, loaded.dtype)
    variants = {f"plain, transformers default (grouped_mm)": plain("grouped_mm"),
                f"plain, as REAP Studio loads it ({loaded_impl})": plain(loaded_impl),
                f"calibration forward (observe, kernel '{auto}')": calibrate()}
    for name in kernels.KERNELS:
        if name != auto:
            variants[f"calibration forward, kernel '{name}' forced"] = calibrate(name)
    variants["reference: every expert on every token"] = reference
    print(f"\n[observer] {loaded.num_layers} layers, {B} x {T} tokens, median of {args.repeats} (after a warm-up)")
    base = None
    for name, fn in variants.items():
        try:
            ts = timed(fn, device, args.repeats if "reference" not in name else max(1, args.repeats // 2))
        except torch.OutOfMemoryError as exc:
            print(f"  {name:<52} out of memory ({str(exc).splitlines()[0][:80]})")
            torch.cuda.empty_cache()
            continue
        finally:
            model.set_experts_implementation(loaded_impl)
        med = statistics.median(ts)
        base = base or med
        print(f"  {name:<52} {med * 1000:9.1f} ms  {B * T / med:10.0f} tokens/s  {med / base:6.2f}x the default")
        report.setdefault("observer", {})[name] = {"ms": med * 1000, "ratio_to_default": med / base}


def section_chat(loaded, args, device, report) -> None:
    E, L = loaded.num_experts, len(loaded.moe_layer_indices)
    scores = torch.rand(L, E, generator=torch.Generator().manual_seed(1)).numpy()
    plan = plan_from_scores(scores, 0.5, loaded.top_k, loaded.moe_layer_indices, criterion="random")
    history = [{"role": "user", "content": "Write a function that adds two numbers and explain it."}]
    N = args.chat_tokens
    loaded.model.generation_config.min_new_tokens = N      # random weights: never stop early, equal lengths
    settings = GenerationSettings(max_new_tokens=N)
    inputs = build_inputs(loaded, history)

    def one_pane():
        list(stream_variants(loaded, [history], [None], settings))

    def two_generations():                                 # the app before batching: a thread per pane
        def worker(p):
            with torch.inference_mode(), masked_view(loaded, p):
                loaded.model.generate(**inputs, max_new_tokens=N, do_sample=False, temperature=None, top_p=None,
                                      top_k=None, pad_token_id=loaded.tokenizer.pad_token_id)
        threads = [threading.Thread(target=worker, args=(p,)) for p in (None, plan)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def both_batched():
        list(stream_variants(loaded, [history, history], [None, plan], settings))

    print(f"\n[chat] greedy, {N} new tokens per pane, prompt {inputs['input_ids'].shape[1]} tokens, pruned pane "
          f"{plan.num_kept}/{E} experts (masked); median of {args.repeats}")
    runs = {"one pane alone": (one_pane, 1), "both panes, two separate generations (before)": (two_generations, 2),
            "both panes, one batched generate (now)": (both_batched, 2)}
    rates = {}
    for name, (fn, panes) in runs.items():
        med = statistics.median(timed(fn, device, args.repeats))
        rates[name] = panes * N / med
    alone = rates["one pane alone"]
    for name, rate in rates.items():
        print(f"  {name:<48} {rate:8.1f} tokens/s combined  {rate / alone:5.2f}x one pane")
    ratio = rates["both panes, one batched generate (now)"] / rates["both panes, two separate generations (before)"]
    print(f"  batched / two separate generations: {ratio:.2f}x combined tokens/s (goal >= 1.7x CPU, >= 1.9x GPU)")
    report["chat"] = {**rates, "batched_over_separate": ratio}
    loaded.model.generation_config.min_new_tokens = None


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
    ap.add_argument("--only", action="append", choices=["observer", "chat", "export"])
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
    sections = args.only or ["observer", "chat", "export"]
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
                section_observer(loaded, args, device, report)
            elif name == "chat":
                section_chat(loaded, args, device, report)
            else:
                section_export(args, report)
        except Exception:                       # one failed section must not cost the others' figures
            failed.append(name)
            print(f"\n[{name}] FAILED:\n{traceback.format_exc()}")
    if device.type == "cuda":
        print(f"\npeak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")
    print(f"total {time.perf_counter() - t0:.0f} s; Qwen3-MoE stack: not yet (that family has not landed)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    if failed:
        sys.exit(f"failed sections: {', '.join(failed)}")


if __name__ == "__main__":
    main()
