"""Cost of collecting REAP statistics, measured side by side in one run.

  plain        model backbone forward with the experts implementation load_model picks on CPU
               ("reap_sorted": routed pairs sorted by expert, one matmul pair per expert)
  grouped_mm   the same with transformers' default implementation (slow on CPU, for reference)
  eager        the same with transformers' eager implementation (for reference)
  observer     the plain forward with reap_core's routed-only observer recording statistics
  all-experts  the reference implementation's approach: run every expert on every token
               ([E, T, H] buffer), then combine the routed ones (statistics reduced from it)

Each variant is warmed up, then run `--repeats` times interleaved (so drift hits all alike);
the median time is reported with tokens/s and the ratio to plain.

    python benchmarks/observer_overhead.py            # 8 layers, hidden 512, 64 experts, top-8, 4 x 512
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from reap_core.model import wrap_model  # noqa: E402
from reap_core.observer import _Accumulator  # noqa: E402
from reap_core.tiny import build_tiny_model, char_tokenizer  # noqa: E402


def all_experts_forward(self, hidden_states, top_k_index, top_k_weights):
    """Reference approach: every expert computes every token; norms for all; routed ones combined."""
    E = self.num_experts
    gate_up = torch.einsum("th,eoh->eto", hidden_states, self.gate_up_proj)   # [E, T, 2I]
    gate, up = gate_up.chunk(2, dim=-1)
    out = torch.einsum("eti,ehi->eth", self.act_fn(gate) * up, self.down_proj)  # [E, T, H]
    norms = out.norm(dim=-1)                                                    # [E, T] statistic for all
    self._ref_sink.append(norms.sum(dim=1))
    tokens = torch.arange(hidden_states.shape[0]).unsqueeze(1).expand_as(top_k_index)
    routed = out[top_k_index, tokens]                                           # [T, K, H]
    assert E == out.shape[0]
    return (routed * top_k_weights.unsqueeze(-1)).sum(dim=1).to(hidden_states.dtype)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--experts", type=int, default=64)
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--expert-width", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    tok = char_tokenizer()
    model = build_tiny_model("causal", vocab_size=len(tok), hidden=args.hidden, layers=args.layers,
                             experts=args.experts, top_k=args.top_k, expert_width=args.expert_width,
                             dense_width=args.hidden * 2, heads=4, head_dim=args.hidden // 4, sliding_window=256)
    loaded = wrap_model(model, tok)
    ids = torch.randint(10, len(tok), (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    T = args.batch * args.seq

    def plain():
        model.model(input_ids=ids, attention_mask=mask, use_cache=False)

    def with_implementation(name):
        def run():
            model.set_experts_implementation(name)
            try:
                plain()
            finally:
                loaded.adapter.prepare(model)
        return run

    def observer():
        acc = _Accumulator({i: i for i in loaded.moe_layer_indices}, args.experts, 1, torch.device("cpu"), 6)
        acc.begin_batch(mask, torch.zeros(args.batch, dtype=torch.long), torch.arange(args.batch), torch.device("cpu"))
        with loaded.adapter.observing(model, acc.record):
            plain()

    def all_experts():
        experts = [layer.experts for _, layer in loaded.adapter.moe_layers(model)]
        for ex in experts:
            ex._ref_sink = []
            ex.forward = types.MethodType(all_experts_forward, ex)
        try:
            plain()
        finally:
            for ex in experts:
                del ex.forward

    variants = {"plain": plain, "observer": observer, "all-experts": all_experts,
                "grouped_mm": with_implementation("grouped_mm"), "eager": with_implementation("eager")}
    times = {k: [] for k in variants}
    with torch.inference_mode():
        for fn in variants.values():   # warm-up
            fn()
        for _ in range(args.repeats):
            for name, fn in variants.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    print(f"conditions: {args.layers} layers, hidden {args.hidden}, {args.experts} experts (width {args.expert_width}), "
          f"top-{args.top_k}, batch {args.batch} x {args.seq} tokens, float32, CPU, {args.threads} threads, "
          f"torch {torch.__version__}, median of {args.repeats}")
    base = statistics.median(times["plain"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:<12} {med * 1000:8.1f} ms  {T / med:9.0f} tokens/s  ratio to plain {med / base:5.2f}x")
    buf = args.experts * T * args.hidden * 4 / 1e6
    print(f"  all-experts transient buffer per layer: E x T x H x 4 B = {buf:.0f} MB "
          f"(observer: O(T x K) floats)")


if __name__ == "__main__":
    main()
