"""Both chat panes for the price of one? Greedy tokens/s measured side by side in one run:

  one pane alone                         chat.stream_variants with one variant
  both panes, two separate generations   the app before batching: one `generate` per pane, each in
                                         its own thread inside its own masked_view, at the same time
  both panes, one batched generate       chat.stream_variants([original, pruned]): one generate,
                                         per-row masks (what the app runs now)

Every run generates exactly `tokens` new tokens per pane (min_new_tokens), so the rates compare
the same work. Median of `repeats` runs after a warm-up, configurations interleaved.
gpu_check.py runs `measure` on a real-width stack on the GPU.

    python benchmarks/chat_throughput.py                    # bundled model, CPU, REAP 50% pruned pane
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from reap_core.chat import GenerationSettings, build_inputs, stream_variants  # noqa: E402
from reap_core.masking import masked_view  # noqa: E402

HISTORY = [{"role": "user", "content": "Write a Python function that returns the sum of a list of numbers."}]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(loaded, plan, tokens: int = 64, repeats: int = 3, history: list[dict] = HISTORY) -> dict[str, float]:
    """Combined tokens/s of each configuration (see the module docstring), printed as a table."""
    device = loaded.input_device
    config = loaded.model.generation_config
    saved = config.min_new_tokens
    config.min_new_tokens = tokens                 # every pane generates the same number of tokens
    settings = GenerationSettings(max_new_tokens=tokens)
    inputs = build_inputs(loaded, history)

    def one_pane():
        list(stream_variants(loaded, [history], [None], settings))

    def two_generations():
        def worker(p):
            with torch.inference_mode(), masked_view(loaded, p):
                loaded.model.generate(**inputs, max_new_tokens=tokens, do_sample=False, temperature=None, top_p=None,
                                      top_k=None, pad_token_id=loaded.tokenizer.pad_token_id)
        threads = [threading.Thread(target=worker, args=(p,)) for p in (None, plan)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def both_batched():
        list(stream_variants(loaded, [history, history], [None, plan], settings))

    configs = {"one pane alone": (one_pane, 1),
               "both panes, two separate generations (before)": (two_generations, 2),
               "both panes, one batched generate (now)": (both_batched, 2)}
    times: dict[str, list[float]] = {k: [] for k in configs}
    try:
        for fn, _ in configs.values():
            fn()                                   # warm-up
        for _ in range(repeats):
            for name, (fn, _) in configs.items():
                _sync(device)
                t = time.perf_counter()
                fn()
                _sync(device)
                times[name].append(time.perf_counter() - t)
    finally:
        config.min_new_tokens = saved
    rates = {name: panes * tokens / statistics.median(times[name]) for name, (_, panes) in configs.items()}
    print(f"  greedy, {tokens} new tokens per pane, prompt {inputs['input_ids'].shape[1]} tokens, pruned pane "
          f"{plan.num_kept}/{plan.num_experts} experts (masked); median of {repeats}, interleaved")
    alone = rates["one pane alone"]
    for name, rate in rates.items():
        print(f"  {name:<48} {rate:8.1f} tokens/s combined  {rate / alone:5.2f}x one pane")
    ratio = rates["both panes, one batched generate (now)"] / rates["both panes, two separate generations (before)"]
    print(f"  batched / two separate generations: {ratio:.2f}x combined tokens/s")
    return {**rates, "batched_over_separate": ratio}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    from reap_core.calibration import build_calibration
    from reap_core.model import BUNDLED_MODEL, load_model
    from reap_core.observer import observe
    from reap_core.plan import make_plan

    loaded = load_model(BUNDLED_MODEL)
    calib = build_calibration("builtin:toy-math,toy-code", loaded.tokenizer, max_tokens=64, samples_per_category=2)
    plan = make_plan(observe(loaded, calib), 0.5, "reap")
    print(f"bundled model ({BUNDLED_MODEL}, {str(loaded.dtype).replace('torch.', '')}), CPU only, "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}; "
          f"pruned pane REAP 50%")
    measure(loaded, plan, args.tokens, args.repeats)


if __name__ == "__main__":
    main()
