"""Give a trained Gemma 4 model full-attention heads twice as wide, without changing what it computes.

    python scripts/widen_global_heads.py assets/toy-gemma4-moe [--out DIR]   (default: in place)

Why: the real Gemma 4 checkpoints have `global_head_dim` (full-attention layers) = 2 x `head_dim`
(sliding layers): 512 vs 256. llama.cpp's stock converter reads the config through
AutoConfig(...).to_dict(), which in transformers 5.19-5.23 leaves out a per-layer head dim equal to
the default, and then fails on the missing `global_head_dim`. A model trained with equal head dims
therefore does not convert; this script gives it the real shape instead of retraining (~100 CPU min).

How it stays the same function (checked at the end: logits before vs after on every task's prompts):
- RoPE: proportional RoPE rotates the first `partial_rotary_factor * head_dim / 2` frequency pairs,
  frequency k = theta^(-2k / head_dim), pair (k, k + head_dim/2). At twice the width, frequency 2k
  is the old frequency k, so old pair i goes to new pair 2i (rotated ones) or to an unrotated pair
  (the rest); the other new dimensions are zero in q, k and v.
- q_norm / k_norm are RMS norms over the head: with half the dimensions zero the RMS halves by sqrt(2),
  so the normalised vector is sqrt(2) larger; their scales are divided by sqrt(2). Attention scaling is
  1.0 in Gemma 4, so q.k is unchanged (up to the norms' eps).
- v_norm has no scale: v comes out sqrt(2) larger; o_proj's columns are divided by sqrt(2).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def dimension_map(old: int, rotated_pairs: int) -> list[int]:
    """New index (at width 2*old) of each old head dimension."""
    half_old, half_new = old // 2, old
    unrotated = iter(range(2 * rotated_pairs, half_new))   # new unrotated pairs come after the rotated ones
    pair = [2 * i if i < rotated_pairs else next(unrotated) for i in range(half_old)]
    return pair + [p + half_new for p in pair]


def widen_layer(weights: dict, prefix: str, heads: int, kv_heads: int, old: int, index: list[int]) -> None:
    new, s = 2 * old, math.sqrt(2.0)

    def rows(name: str, n_heads: int) -> None:
        w = weights[name].view(n_heads, old, -1)
        out = w.new_zeros(n_heads, new, w.shape[-1])
        out[:, index] = w
        weights[name] = out.reshape(n_heads * new, -1)

    rows(f"{prefix}q_proj.weight", heads)
    rows(f"{prefix}k_proj.weight", kv_heads)
    if f"{prefix}v_proj.weight" in weights:
        rows(f"{prefix}v_proj.weight", kv_heads)
    for norm in ("q_norm", "k_norm"):
        w = weights[f"{prefix}{norm}.weight"]
        out = w.new_zeros(new)
        out[index] = w / s
        weights[f"{prefix}{norm}.weight"] = out
    o = weights[f"{prefix}o_proj.weight"].view(-1, heads, old)
    out = o.new_zeros(o.shape[0], heads, new)
    out[:, :, index] = o / s
    weights[f"{prefix}o_proj.weight"] = out.reshape(o.shape[0], heads * new)


def reference_prompts(tokenizer, n: int = 4) -> list[list[int]]:
    from reap_core import toy_tasks
    ids = []   # whole conversations, answers included: every position is checked
    for domain in toy_tasks.TEXT_DOMAINS:
        for item in toy_tasks.generate(domain, n, toy_tasks.EVAL_SEED):
            ids.append(tokenizer.apply_chat_template(toy_tasks.to_messages(item), tools=toy_tasks.tools_of(item),
                                                     tokenize=True, return_dict=False))
    return ids


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--out", default=None, help="output folder (default: rewrite MODEL in place)")
    args = p.parse_args()
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    src = Path(args.model)
    config = json.loads((src / "config.json").read_text())
    text = config["text_config"]
    old = text["head_dim"]
    if text.get("global_head_dim", old) != old:
        sys.exit(f"{src}: global_head_dim is already {text['global_head_dim']} (head_dim {old}); nothing to do")
    rope = text["rope_parameters"]["full_attention"]
    assert rope["rope_type"] == "proportional", rope
    rotated = int(rope.get("partial_rotary_factor", 1.0) * old // 2)
    index = dimension_map(old, rotated)

    tok = AutoTokenizer.from_pretrained(src)
    prompts = reference_prompts(tok)
    before = AutoModelForImageTextToText.from_pretrained(src, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = [before(input_ids=torch.tensor([ids])).logits[0] for ids in prompts]
    del before

    out = Path(args.out) if args.out else src
    if out != src:
        shutil.copytree(src, out, dirs_exist_ok=True)
    weights = load_file(str(src / "model.safetensors"))
    for i, kind in enumerate(text["layer_types"]):
        if kind == "full_attention":
            widen_layer(weights, f"model.language_model.layers.{i}.self_attn.", text["num_attention_heads"],
                        text.get("num_global_key_value_heads") or text["num_key_value_heads"], old, index)
    text["global_head_dim"] = 2 * old
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    after = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32).eval()
    worst, same_top1, total = 0.0, 0, 0
    with torch.no_grad():
        for ids, r in zip(prompts, ref):
            got = after(input_ids=torch.tensor([ids])).logits[0]
            worst = max(worst, (got - r).abs().max().item())
            same_top1 += int((got.argmax(-1) == r.argmax(-1)).sum())
            total += len(ids)
    print(f"global_head_dim {old} -> {2 * old}: {len(prompts)} prompts, {total} positions; "
          f"max |logit difference| {worst:.2e}; same top-1 at {same_top1}/{total}")
    if worst > 1e-3:
        sys.exit("the widened model computes something else: not kept")


if __name__ == "__main__":
    main()
