"""A REAP-pruned (or merged) export of a tiny random model of every family, for engine checks (scripts/check_engines.sh).

    python scripts/family_exports.py OUT_DIR [--ratio 0.5] [--families qwen3_moe,mixtral] [--method ream]

Each family: reap_core.tiny's model (random weights, the char tokenizer with a chat template) saved to
OUT_DIR/<family>-source, calibrated on a few built-in samples, pruned with REAP (or merged) and exported (verified)
to OUT_DIR/<family>-<method><percent>. Then:  for d in OUT_DIR/*-reap*; do scripts/check_engines.sh $d vllm; done
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


# config keys the released checkpoints have and transformers does not need, but vLLM reads: without them vLLM
# builds DeepSeek-V3's router without its selection bias and cannot build MiniMax-M2's router at all
AS_RELEASED = {"deepseek_v3": {"topk_method": "noaux_tc", "scoring_func": "sigmoid"},
               "minimax_m2": {"scoring_func": "sigmoid", "use_routing_bias": True}}


def main() -> None:
    from reap_core.calibration import build_calibration
    from reap_core.export import export_merged, export_pruned
    from reap_core.merge_plan import plan_merge
    from reap_core.merge_signals import collect_merge_signals
    from reap_core.merging import build_merged
    from reap_core.model import load_model
    from reap_core.observer import observe
    from reap_core.plan import make_plan
    from reap_core.tiny import TINY_FAMILY_CONFIGS, build_tiny_family, char_tokenizer

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--method", default="reap", help="reap (prune) or a merge method: hc-smoe, m-smoe, ream")
    p.add_argument("--families", default=",".join(TINY_FAMILY_CONFIGS))
    p.add_argument("--head-dim", type=int, default=64,
                   help="attention head dim (vLLM's CPU attention takes 32, 64, 80, 96, 112, 128, 256; the tests' "
                        "tiny models use 16)")
    args = p.parse_args()
    out = Path(args.out)
    tok = char_tokenizer()
    for family in args.families.split(","):
        src = out / f"{family}-source"
        wide = {"head_dim": args.head_dim, "hidden_size": 2 * args.head_dim}   # 2 heads; OLMoE norms q over H
        if family == "deepseek_v3":   # multi-head latent attention: its own head dims
            # vLLM's CPU MLA kernel takes DeepSeek's own latent size only (kv_lora_rank 512 + rope 64)
            wide = {"kv_lora_rank": 512, "qk_rope_head_dim": 64, "qk_nope_head_dim": 64, "v_head_dim": args.head_dim,
                    "head_dim": 64,
                    "hidden_size": 2 * args.head_dim}
        wide.update(AS_RELEASED.get(family, {}))
        build_tiny_family(family, vocab_size=len(tok), **wide).save_pretrained(src)
        tok.save_pretrained(src)
        loaded = load_model(str(src))
        calib = build_calibration("builtin", loaded.tokenizer, max_tokens=64, samples_per_category=4)
        stats = observe(loaded, calib)
        folder = out / f"{family}-{args.method}{round(args.ratio * 100)}"
        if args.method == "reap":
            plan = make_plan(stats, args.ratio, "reap")
            result = export_pruned(str(src), plan, stats, folder, loaded=loaded)
        else:
            merged = build_merged(loaded, plan_merge(stats, collect_merge_signals(loaded, calib), args.method, args.ratio))
            plan = merged.plan.pruning
            result = export_merged(loaded, merged, stats, folder)
        print(f"{family}: {plan.num_kept} of {plan.num_experts} experts kept, max |Δ logits| {result.max_abs_diff:.1e} "
              f"-> {result.path}", flush=True)


if __name__ == "__main__":
    main()
