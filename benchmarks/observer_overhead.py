"""Cost of collecting REAP statistics beside what a user would otherwise run, side by side in one run.

  plain, transformers default   the backbone forward with transformers' default experts
                                implementation (`grouped_mm`, on every device): what a user runs
  plain, as REAP Studio loads   the same with the implementation load_model picks (CPU: `reap_sorted`)
  observing forward             the forward inside `adapter.observing` with the statistics recorder
                                (the kernel chosen per device); then its parts: the kernel with a
                                no-op recorder, and each other kernel forced
  observe() end to end          observer.observe on one batch: the forward plus batching and the
                                top-token text (decoded once per calibration, not per batch)
  reference approach            the reference implementation's: every expert computes every token
                                ([E, T, H]), statistics reduced from all of them

Each variant is warmed up, then run `--repeats` times (synchronised on a GPU); the median is
reported with tokens/s and the ratio to transformers' default. gpu_check.py runs `measure` on a
real-width stack on the GPU.

    python benchmarks/observer_overhead.py                      # CPU: Gemma 4 stack, 8 layers, hidden 512, 64 experts, top-8
    python benchmarks/observer_overhead.py --family qwen3_moe   # CPU: Qwen3-MoE stack, 128 experts, top-8
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import types
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from reap_core.adapters import kernels  # noqa: E402
from reap_core.calibration import CalibrationSet  # noqa: E402
from reap_core.model import wrap_model  # noqa: E402
from reap_core.observer import _Accumulator, observe  # noqa: E402
from reap_core.tiny import build_tiny_family, build_tiny_model, char_tokenizer  # noqa: E402


def qwen3_moe_stack(tok, layers: int, hidden: int, experts: int, top_k: int, expert_width: int, heads: int,
                    head_dim: int, kv_heads: int, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """A Qwen3-MoE layer stack (every layer MoE, renormalised top-k) with random weights, on `device`."""
    return build_tiny_family("qwen3_moe", dtype=dtype, device=device, vocab_size=len(tok), hidden_size=hidden,
                             num_hidden_layers=layers, mlp_only_layers=[], num_experts=experts,
                             num_experts_per_tok=top_k, moe_intermediate_size=expert_width,
                             intermediate_size=hidden * 3, num_attention_heads=heads, head_dim=head_dim,
                             num_key_value_heads=kv_heads)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int) -> list[float]:
    fn()                                   # warm-up (kernels, allocator, caches)
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
    self._ref_sink = torch.linalg.vector_norm(out, dim=-1, dtype=torch.float32).sum(dim=1)   # for all
    tokens = torch.arange(hidden_states.shape[0], device=hidden_states.device).unsqueeze(1).expand_as(top_k_index)
    return (out[top_k_index, tokens] * top_k_weights.unsqueeze(-1).to(out.dtype)).sum(dim=1).to(hidden_states.dtype)


@contextmanager
def forced_kernel(name: str | None):
    old = os.environ.pop("REAP_OBSERVER_KERNEL", None)
    if name:
        os.environ["REAP_OBSERVER_KERNEL"] = name
    try:
        yield
    finally:
        os.environ.pop("REAP_OBSERVER_KERNEL", None)
        if old is not None:
            os.environ["REAP_OBSERVER_KERNEL"] = old


def measure(loaded, batch: int, seq: int, repeats: int, reference: bool = True) -> dict[str, float]:
    """Median seconds of every variant (see the module docstring), printed as a table."""
    model, adapter = loaded.model, loaded.adapter
    device = loaded.input_device
    ids = torch.randint(10, len(loaded.tokenizer), (batch, seq), generator=torch.Generator().manual_seed(0))
    ids_dev, mask_dev = ids.to(device), torch.ones_like(ids).to(device)
    calib = CalibrationSet(spec="random tokens", token_ids=ids.tolist(), category_ids=[0] * batch,
                           categories=["random"], max_tokens=seq)
    loads_with = getattr(model.config, "_experts_implementation", None) or "grouped_mm"
    layer_rows = {i: row for row, i in enumerate(loaded.moe_layer_indices)}

    def forward():
        with torch.inference_mode():
            model.model(input_ids=ids_dev, attention_mask=mask_dev, use_cache=False)

    def plain(impl):
        def run():
            model.set_experts_implementation(impl)
            try:
                forward()
            finally:
                model.set_experts_implementation(loads_with)
        return run

    def observing(kernel=None, recorder=True):
        def run():
            acc = _Accumulator(layer_rows, loaded.num_experts, 1, device, 6)
            acc.begin_batch(mask_dev, torch.zeros(batch, dtype=torch.long), torch.arange(batch), device)
            with forced_kernel(kernel), adapter.observing(model, acc.record if recorder else (lambda *a: None)):
                forward()
        return run

    def end_to_end():
        observe(loaded, calib, batch_size=batch)

    def every_expert():
        experts = [adapter.experts(layer) for _, layer in adapter.moe_layers(model)]
        for ex in experts:
            ex.forward = types.MethodType(all_experts_forward, ex)
        try:
            forward()
        finally:
            for ex in experts:
                del ex.forward

    auto = kernels.observer_kernel_name(device, loaded.dtype)
    variants = {"plain, transformers default (grouped_mm)": plain("grouped_mm"),
                f"plain, as REAP Studio loads it ({loads_with})": plain(loads_with),
                f"observing forward (kernel '{auto}' + recorder)": observing(),
                "  its kernel alone (no-op recorder)": observing(recorder=False)}
    for name in kernels.KERNELS:
        if name != auto:
            variants[f"  observing forward, kernel '{name}' forced"] = observing(name)
    variants["observe() end to end, one batch"] = end_to_end
    if reference:
        variants["reference: every expert on every token"] = every_expert
    print(f"  {batch} x {seq} tokens, median of {repeats} after a warm-up; ratio to transformers' default")
    results, base = {}, None
    for name, fn in variants.items():
        try:
            med = statistics.median(timed(fn, device, repeats))
        except torch.OutOfMemoryError as exc:
            print(f"  {name:<50} out of memory ({str(exc).splitlines()[0][:80]})")
            torch.cuda.empty_cache()
            continue
        base = base or med
        results[name] = med
        print(f"  {name:<50} {med * 1000:9.1f} ms  {batch * seq / med:10.0f} tokens/s  {med / base:6.2f}x")
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", choices=["gemma4", "qwen3_moe"], default="gemma4")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--experts", type=int, default=None, help="default 64 (Gemma 4 stack), 128 (Qwen3-MoE)")
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--expert-width", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tok = char_tokenizer()
    args.experts = args.experts or (128 if args.family == "qwen3_moe" else 64)
    if args.family == "qwen3_moe":
        model = qwen3_moe_stack(tok, args.layers, args.hidden, args.experts, args.top_k, args.expert_width, heads=4,
                                head_dim=args.hidden // 4, kv_heads=2)
    else:
        model = build_tiny_model("causal", vocab_size=len(tok), hidden=args.hidden, layers=args.layers,
                                 experts=args.experts, top_k=args.top_k, expert_width=args.expert_width,
                                 dense_width=args.hidden * 2, heads=4, head_dim=args.hidden // 4, sliding_window=256)
    loaded = wrap_model(model, tok)
    print(f"conditions: {type(model).__name__}, {args.layers} layers, hidden {args.hidden}, {args.experts} experts "
          f"(width {args.expert_width}), "
          f"top-{args.top_k}, float32, CPU only, {args.threads} threads, torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.1f}")
    measure(loaded, args.batch, args.seq, args.repeats)
    buf = args.experts * args.batch * args.seq * args.hidden * 4 / 1e6
    print(f"  reference transient buffer per layer: E x T x H x 4 B = {buf:.0f} MB (observer: O(T x K) floats)")


if __name__ == "__main__":
    main()
