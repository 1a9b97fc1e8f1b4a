"""Train the bundled toy Gemma 4 MoE: corpus -> tokenizer -> model -> training -> save -> eval.

    python scripts/train_toy_model.py --steps 150 --out runs/toy-trial   # a quick trial

The bundled model was made in three stages (each continues the previous one with the same corpus
and tokenizer; a single long run would do, the stages are how CPU time was available):

    nice -n 5 python scripts/train_toy_model.py --out runs/toy-v1
    nice -n 5 python scripts/train_toy_model.py --init-from runs/toy-v1 --steps 1500 --lr 1.5e-3 \
        --warmup 50 --out runs/toy-v2
    nice -n 5 python scripts/train_toy_model.py --init-from runs/toy-v2 --steps 1900 --lr 1e-3 \
        --warmup 50 --out runs/toy-v3        # copied to assets/toy-gemma4-moe

What enters: nothing but flags (the corpus is procedural, see reap_core/toy_tasks.py).
What leaves: a Hugging Face folder (model.safetensors, config.json, generation_config.json,
tokenizer.json, tokenizer_config.json, chat_template.jinja, README.md) that loads offline with
AutoModelForCausalLM / AutoTokenizer, and a progress log (default runs/toy_train.log).

The model is stock `Gemma4ForCausalLM` (Gemma4TextConfig, enable_moe_block=True): every layer
has the dense MLP and the MoE block side by side, sliding and full attention layers, the real
router (softmax over E -> top-k -> renormalise -> x per_expert_scale). Nothing is patched; the
only training-time addition is a Switch-style load-balancing loss on the router probabilities
(Gemma 4 in transformers has none), so that all experts get used and can specialise.

Reproducible: one seed for the corpus, the tokenizer (deterministic BPE), the init and the batch
order. Threads are fixed (torch.set_num_threads) because CPU reductions can differ across thread
counts in the last bits.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reap_core import toy_tasks  # noqa: E402

# Gemma 4's control tokens, ids fixed at the start of the vocabulary in this order (the byte-fallback
# tokens <0x00>..<0xFF> follow them, then the learned pieces).
SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<|turn>", "<turn|>", "<|think|>", "<|channel>",
                  "<channel|>", "<|tool>", "<tool|>", "<|tool_call>", "<tool_call|>", "<|tool_response>",
                  "<tool_response|>", '<|"|>', "<|image>", "<|image|>", "<image|>", "<|audio>", "<|audio|>",
                  "<audio|>", "<|video|>"]
MEDIA_TOKENS = {"image_token": "<|image|>", "boi_token": "<|image>", "eoi_token": "<image|>",
                "audio_token": "<|audio|>", "boa_token": "<|audio>", "eoa_token": "<audio|>"}
# The published Gemma 4 chat format, written here (scripts/gemma4_chat_template.jinja).
CHAT_TEMPLATE = (ROOT / "scripts" / "gemma4_chat_template.jinja").read_text()
END_OF_REPLY = {"tools": "<|tool_response>"}   # a tool call ends where the tool's response goes

# Image processing of the bundled processor: 4-pixel patches pooled 2x2, so a 64x64 picture is 256
# patches in the vision tower and 64 image tokens in the text model.
PATCH, POOL, MAX_SOFT_TOKENS = 4, 2, 70


# ------------------------------------------------------------------------------------------
# Tokenizer: Gemma 4's kind — SentencePiece-style BPE with byte fallback. Spaces become "▁" (normalizer),
# merges run over whole lines (split only at newlines, as llama.cpp's Gemma 4 tokenizer does), unknown
# characters fall back to <0xNN> byte tokens. Trained on chunks that never join letters, digits and
# punctuation, and digits stay single (arithmetic needs them one by one).
# ------------------------------------------------------------------------------------------

def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    chunks = pre_tokenizers.Split(Regex(r"\d|▁?[^\s\d\p{P}\p{S}▁]+|▁?[[\p{P}\p{S}]&&[^▁]]+|▁+|\n+|\s"), "isolated")
    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>"))
    trainer_tok.normalizer = normalizers.Replace(" ", "▁")
    trainer_tok.pre_tokenizer = chunks
    # Control tokens are cut out of the training text (BpeTrainer would otherwise learn merges that
    # spell them, and typed "<turn|>" would become the real token).
    control = re.compile("|".join(re.escape(t) for t in sorted(SPECIAL_TOKENS, key=len, reverse=True)))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(SPECIAL_TOKENS) - 256, show_progress=False)
    trainer_tok.train_from_iterator((control.sub("\n", t) for t in texts), trainer=trainer)
    learned = json.loads(trainer_tok.to_str())["model"]
    # Rebuild: specials, the 256 byte tokens, then the learned pieces in their order; merges as learned.
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\n+"), "isolated")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens(SPECIAL_TOKENS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        mask_token="<mask>", extra_special_tokens=MEDIA_TOKENS, padding_side="left", model_max_length=1024)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def image_processor():
    from transformers.models.gemma4 import Gemma4ImageProcessorPil

    return Gemma4ImageProcessorPil(max_soft_tokens=MAX_SOFT_TOKENS, patch_size=PATCH, pooling_kernel_size=POOL)


def expand_images(text: str, tokenizer, soft_tokens: int) -> str:
    """The processor's expansion of each image placeholder: <|image> + soft tokens + <image|>."""
    return text.replace("<|image|>", "<|image>" + "<|image|>" * soft_tokens + "<image|>")


def prompt_and_reply(item, thinking: bool) -> tuple[list[dict], list | None, str]:
    """(messages without the answer, tools, the reply text the model is trained to write + its end token)."""
    messages = toy_tasks.to_messages(item, with_answer=False)
    end = END_OF_REPLY.get(item.domain, "<turn|>")
    return messages, toy_tasks.tools_of(item), item.reply(thinking) + end


def encode_example(tokenizer, item, thinking: bool, soft_tokens: int) -> tuple[list[int], int]:
    """Token ids of prompt + reply and where the reply starts (the loss covers the reply only)."""
    messages, tools, reply = prompt_and_reply(item, thinking)
    prompt = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False,
                                           enable_thinking=thinking)
    p_ids = tokenizer(expand_images(prompt, tokenizer, soft_tokens), add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(reply, add_special_tokens=False)["input_ids"]
    return p_ids + r_ids, len(p_ids)


# ------------------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------------------

def build_config(args, tokenizer):
    """Gemma4Config: the MoE text model plus a small vision tower (no audio), with the fields the real
    checkpoint's config has (global_head_dim, image token ids, end tokens)."""
    from transformers import Gemma4Config

    n = args.layers
    # Every third layer full attention (the real model has 5 sliding : 1 full); last is full.
    layer_types = ["full_attention" if (i + 1) % 3 == 0 or i == n - 1 else "sliding_attention"
                   for i in range(n)]
    ids = tokenizer.convert_tokens_to_ids
    ends = [ids("<eos>"), ids("<turn|>"), ids("<|tool_response>")]
    text = dict(
        vocab_size=len(tokenizer), hidden_size=args.hidden, intermediate_size=args.dense_width,
        num_hidden_layers=n, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        head_dim=args.head_dim, global_head_dim=args.global_head_dim or 2 * args.head_dim,
        max_position_embeddings=1024,
        sliding_window=args.sliding_window, layer_types=layer_types,
        enable_moe_block=True, num_experts=args.experts, top_k_experts=args.top_k,
        moe_intermediate_size=args.expert_width, hidden_size_per_layer_input=0,
        vocab_size_per_layer_input=len(tokenizer), final_logit_softcapping=30.0,
        pad_token_id=ids("<pad>"), bos_token_id=ids("<bos>"), eos_token_id=ends, tie_word_embeddings=True)
    vision = dict(hidden_size=args.vision_hidden, intermediate_size=2 * args.vision_hidden,
                  num_hidden_layers=args.vision_layers, num_attention_heads=2, num_key_value_heads=2,
                  head_dim=args.vision_hidden // 2, patch_size=PATCH, pooling_kernel_size=POOL,
                  position_embedding_size=64)
    return Gemma4Config(text_config=text, vision_config=vision, audio_config=None,
                        boi_token_id=ids("<|image>"), eoi_token_id=ids("<image|>"), image_token_id=ids("<|image|>"),
                        video_token_id=ids("<|video|>"), boa_token_id=ids("<|audio>"),
                        eoa_token_index=ids("<audio|>"), audio_token_id=ids("<|audio|>"),
                        eos_token_id=ends, pad_token_id=ids("<pad>"), bos_token_id=ids("<bos>"),
                        tie_word_embeddings=True)


def init_vision(model) -> None:
    """A usable start for a vision tower trained from scratch. transformers' init fills Gemma 4's patch
    position table with ONES (the real model loads trained values): every patch then gets the same
    large vector, no position, and the pixels' small projection drowns in it — measured here, 1500
    steps learnt nothing from the pictures. Positions get small random values and the patch projection
    unit gain instead."""
    embedder = model.model.vision_tower.patch_embedder
    with torch.no_grad():
        embedder.position_embedding_table.normal_(0.0, 0.1)
        embedder.input_proj.weight.normal_(0.0, embedder.input_proj.in_features ** -0.5)


def warm_start(model, old_dir: str, tokenizer, log) -> None:
    """Start the text model from an earlier bundled text-only model (Gemma4ForCausalLM, byte-level BPE):
    its decoder layers as they are, and each embedding row whose token text exists in the new vocabulary
    (the old byte-level pieces decoded to text, spaces as "▁"). New rows keep their random init."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    old = load_file(str(Path(old_dir) / "model.safetensors"))
    old_tok = AutoTokenizer.from_pretrained(old_dir)
    to_byte = {c: b for b, c in bytes_to_unicode().items()}
    text_model = model.model.language_model
    state = {k[len("model."):]: v for k, v in old.items() if k.startswith("model.") and "embed_tokens" not in k}
    missing, unexpected = text_model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    new_vocab = tokenizer.get_vocab()
    emb_old, emb_new = old["model.embed_tokens.weight"], text_model.embed_tokens.weight
    copied = 0
    with torch.no_grad():
        for piece, i in old_tok.get_vocab().items():
            if piece in new_vocab:                      # control tokens keep their names
                j = new_vocab[piece]
            else:
                try:
                    text = bytes(to_byte[c] for c in piece).decode("utf-8")
                except (KeyError, UnicodeDecodeError):
                    continue
                j = new_vocab.get(text.replace(" ", "▁"), new_vocab.get(text))
            if j is not None:
                emb_new[j] = emb_old[i]
                copied += 1
    log(f"warm start from {old_dir}: layers loaded (missing {len(missing)} keys: embeddings), "
        f"{copied}/{len(new_vocab)} embedding rows copied by token text")


class RouterTap:
    """Forward hooks on every router: keeps (probs [T, E], top_k_index [T, K]) of the last step."""

    def __init__(self, model):
        self.records: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.handles = [m.register_forward_hook(self._hook) for name, m in model.named_modules()
                        if name.endswith(".router")]

    def _hook(self, module, inputs, output):
        probs, _, top_k_index = output
        self.records.append((probs, top_k_index))

    def balance_loss(self, token_mask: torch.Tensor) -> torch.Tensor:
        """Switch Transformer loss E * sum_e f_e * P_e, averaged over layers, real tokens only."""
        keep = token_mask.reshape(-1)
        losses = []
        for probs, idx in self.records:
            probs, idx = probs[keep], idx[keep]
            n_exp = probs.shape[-1]
            frac = torch.zeros(n_exp).index_add_(0, idx.reshape(-1), torch.ones(idx.numel()))
            frac = frac / idx.numel()
            losses.append(n_exp * (frac * probs.mean(0)).sum())
        self.records.clear()
        return torch.stack(losses).mean()


# ------------------------------------------------------------------------------------------
# Data: length-bucketed batches of whole conversations (no packing, so training sees exactly
# what inference sees), loss only on the assistant answer (including its <turn|>).
# ------------------------------------------------------------------------------------------

def make_batches(encoded: list[tuple[list[int], int]], tokens_per_batch: int, rng: random.Random):
    order = list(range(len(encoded)))
    rng.shuffle(order)
    batches = []
    chunk = 64 * 32
    for s in range(0, len(order), chunk):
        part = sorted(order[s:s + chunk], key=lambda i: len(encoded[i][0]))
        cur: list[int] = []
        for i in part:
            longest = max([len(encoded[j][0]) for j in cur] + [len(encoded[i][0])])
            if cur and longest * (len(cur) + 1) > tokens_per_batch:
                batches.append(cur)
                cur = []
            cur.append(i)
        if cur:
            batches.append(cur)
    rng.shuffle(batches)
    return batches


def collate(encoded, batch: list[int], pad_id: int):
    width = max(len(encoded[i][0]) for i in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for r, i in enumerate(batch):
        toks, start = encoded[i]
        ids[r, : len(toks)] = torch.tensor(toks)
        mask[r, : len(toks)] = 1
        labels[r, start: len(toks)] = torch.tensor(toks[start:])
    return ids, mask, labels


def write_model_card(out_dir: Path, meta: dict) -> None:
    """README.md of the bundled folder: what the model is, how it was made, what it scores."""
    a = meta["args"]
    config = json.loads((out_dir / "config.json").read_text())
    t, v = config["text_config"], config["vision_config"]
    size_mb = sum(f.stat().st_size for f in out_dir.iterdir() if f.is_file()) / 2**20
    tok = json.loads((out_dir / "tokenizer.json").read_text())
    lines = [
        "---", "license: apache-2.0", "library_name: transformers", "pipeline_tag: image-text-to-text",
        "tags: [gemma4, moe, toy, reap, multimodal]", "---", "",
        "# toy-gemma4-moe",
        "",
        "A small multimodal Gemma 4 mixture-of-experts model trained by REAP Studio on a procedural chat corpus",
        "(text and synthetic pictures), bundled so the app and its tests work offline on a laptop CPU. Every answer",
        "can be checked by a program, so expert-pruning claims (which criterion keeps more, how much the",
        "calibration domain matters, whether a text-only calibration hurts vision) can be tested in seconds.",
        "It knows nothing else.",
        "",
        "## Architecture",
        "",
        f"Stock `Gemma4ForConditionalGeneration` (`Gemma4Config`): a vision tower ({v['num_hidden_layers']} layers,"
        f" width {v['hidden_size']}, {v['patch_size']}-pixel patches pooled {v['pooling_kernel_size']}x"
        f"{v['pooling_kernel_size']}: a 64x64 picture is 64 image tokens) and the MoE text model:"
        f" {t['num_hidden_layers']} layers ({', '.join(t['layer_types'])}; sliding window {t['sliding_window']}),"
        f" hidden {t['hidden_size']}, {t['num_attention_heads']} heads / {t['num_key_value_heads']} KV heads of dim"
        f" {t['head_dim']} (sliding) / {t.get('global_head_dim', t['head_dim'])} (full attention), dense MLP width {t['intermediate_size']} beside an MoE block of {t['num_experts']}"
        f" experts (width {t['moe_intermediate_size']}, top-{t['top_k_experts']}) in every layer, vocabulary"
        f" {t['vocab_size']}, tied embeddings. {meta['params'] / 1e6:.2f}M parameters"
        f" ({meta['vision_params'] / 1e6:.2f}M in the vision tower), float32, {size_mb:.1f} MB.",
        "",
        f"Tokenizer: Gemma 4's kind — SentencePiece-style BPE with byte fallback (`{tok['model']['type']}`,"
        " `byte_fallback: true`, spaces as `▁`, digits one by one), with Gemma 4's control tokens. Processor:"
        " `Gemma4Processor` (`processor_config.json`; without torchvision, REAP Studio builds it without its"
        " video part).",
        "",
        "Chat format: the published Gemma 4 format (`chat_template.jinja`): `<bos>`, a system turn with"
        " `<|think|>` when thinking is on and the tool declarations, `<|turn>user\\n…<turn|>\\n`, the generation"
        " prompt `<|turn>model\\n` followed by an empty thought channel `<|channel>thought\\n<channel|>` when"
        " thinking is off; tool calls `<|tool_call>call:NAME{…}<tool_call|>`. Generation stops at `<turn|>`,"
        " `<eos>` or `<|tool_response>`.",
        "",
        "## Training data",
        "",
        f"Eight tasks generated by `reap_core/toy_tasks.py` and `reap_core/toy_vision.py` (seed {a['seed']},"
        f" {a['per_domain']} items per task, {a['thinking_share']:.0%} of them with thinking on):",
        "",
        "| task | what | check |",
        "|---|---|---|",
        "| math | word problems (add / subtract two-digit numbers, multiply digits), worked column by column, `The answer is N.` | final number |",
        "| code | small Python function from a one-line description | `ast.parse` + unit tests |",
        "| tools | a Gemma 4 tool call for one of 3 tools declared in the system turn | name and every argument |",
        "| facts | capitals, continents, chemical symbols from a built-in table | exact answer |",
        "| translation | simple English sentences into Spanish | exact answer |",
        "| shapes | a 64x64 picture of one shape: its colour and kind | both words |",
        "| counting | 1–5 shapes in a picture: how many | the number |",
        "| position | one shape in one quarter of a picture: where | the quarter |",
        "",
        "With thinking on, the model writes a thought first (math: its column steps; the others: one line) and"
        " then the answer (math: `The answer is N.`); with thinking off it answers at once (math shows its"
        " column steps in the answer).",
        "",
        "Calibration sets (`assets/calibration/toy-<task>.jsonl`, pictures in `assets/calibration/images/`) use"
        " another seed; the evaluation suite uses a third one.",
        "",
        "## Training",
        "",
        f"`python scripts/train_toy_model.py --warm-start <the earlier text-only bundled model>` ({a['steps']}"
        f" steps of AdamW, lr {a['lr']}, cosine, {a['warmup']} warm-up steps, weight decay 0.05, batches of up to"
        f" {a['tokens_per_batch']} tokens, loss on the answers only, plus a Switch-style load-balancing loss"
        f" (coefficient {a['balance_coef']}) so every expert is used): {meta['train_minutes']:.0f} minutes on"
        f" {a['threads']} CPU threads, seeded.",
        "",
    ]
    s1 = meta.get("stage1")
    if s1:
        b = s1["args"]
        lines[-2:] = [
            lines[-2] + f" This was the second stage (`--init-from` the first, `--reinit-vision"
            f" --domain-weights {a['domain_weights']}`). The first: `--warm-start <the earlier text-only bundled"
            f" model> --per-domain {b['per_domain']} --lr {b['lr']}`, {s1['steps_done']} steps, {s1['train_minutes']:.0f}"
            " minutes — the text model's layers started from the earlier text-only bundled model (92 CPU minutes,"
            " byte-level tokenizer), its embeddings copied row by row where a token's text exists in the new"
            " vocabulary. It was stopped by hand: " + s1["why"] + ".", ""]
    if meta.get("stopped_early_at_step"):
        lines += [f"Stopped early at step {meta['stopped_early_at_step']} (`--max-minutes`).", ""]
    if "eval" in meta and "eval_thinking" in meta:
        ev = meta["eval"]
        lines += ["## Evaluation", "",
                  f"Greedy, held-out items (seed {ev['seed']}), {next(iter(ev['per_domain'].values()))['total']}"
                  " per task: `python -m reap_core eval --model assets/toy-gemma4-moe --suite toy`"
                  " (add `--thinking` for thinking on)", "",
                  "| task | thinking off | thinking on |", "|---|---|---|"]
        off, on = meta["eval"]["per_domain"], meta["eval_thinking"]["per_domain"]
        for d in off:
            lines.append(f"| {d} | {off[d]['correct']}/{off[d]['total']} ({off[d]['accuracy']:.0%}) |"
                         f" {on[d]['correct']}/{on[d]['total']} ({on[d]['accuracy']:.0%}) |")
        lines += [f"| **mean** | **{meta['eval']['mean_accuracy']:.0%}** | **{meta['eval_thinking']['mean_accuracy']:.0%}** |", ""]
    if "tokens_per_s" in meta:
        lines += [f"Generation speed: {meta['tokens_per_s']:.0f} tokens/s (CPU, {a['threads']} threads, float32,"
                  " greedy, batch 1, 64 new tokens).", ""]
    (out_dir / "README.md").write_text("\n".join(lines))


def finish(out_dir: Path, items: int, log) -> None:
    """Evaluate a trained folder (thinking off and on), measure its speed, write its model card."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from reap_core.model import load_model
    from reap_core.task_eval import run_suite

    meta = json.loads((out_dir / "training_args.json").read_text())
    earlier = Path(meta["args"].get("init_from") or "") / "training_args.json"
    if meta.get("stage1") is None and meta["args"].get("init_from") and earlier.is_file():
        meta["stage1"] = json.loads(earlier.read_text())
    loaded = load_model(str(out_dir))
    for key, thinking in (("eval", False), ("eval_thinking", True)):
        t = time.time()
        result = run_suite(loaded.model, loaded.tokenizer, "toy", items_per_domain=items, thinking=thinking,
                           processor=loaded.processor)
        log(f"eval, thinking {'on' if thinking else 'off'} ({items}/task, {time.time() - t:.0f}s):\n"
            f"{result.format_table()}")
        meta[key] = result.to_dict()
    meta["tokens_per_s"] = measure_tokens_per_s(loaded.model, loaded.tokenizer)
    log(f"generation: {meta['tokens_per_s']:.1f} tokens/s (greedy, batch 1, 64 new tokens)")
    (out_dir / "training_args.json").write_text(json.dumps(meta, indent=2) + "\n")
    write_model_card(out_dir, meta)


def measure_tokens_per_s(model, tokenizer, new_tokens: int = 64) -> float:
    """Greedy, batch 1, exactly `new_tokens` new tokens (stop tokens ignored), after a warm-up."""
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of Peru?"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    kw = dict(do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    model.generate(**ids, **kw)
    t = time.time()
    out = model.generate(**ids, **kw)
    return (out.shape[1] - ids["input_ids"].shape[1]) / (time.time() - t)


class Log:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.f = path.open("a")

    def __call__(self, msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        self.f.write(line + "\n")
        self.f.flush()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "runs" / "toy-vlm"))
    p.add_argument("--log", default=str(ROOT / "runs" / "toy_train.log"))
    p.add_argument("--seed", type=int, default=toy_tasks.TRAIN_SEED)
    p.add_argument("--per-domain", type=int, default=6000, help="training items per domain")
    p.add_argument("--domain-weights", default="",
                   help="e.g. math=2,shapes=1.5: items of a domain = per-domain x weight (default 1)")
    p.add_argument("--reinit-vision", action="store_true", help="with --init-from: start the vision tower afresh")
    p.add_argument("--thinking-share", type=float, default=0.4, help="share of examples rendered with thinking on")
    p.add_argument("--vocab", type=int, default=3000)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=192)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=48)
    p.add_argument("--global-head-dim", type=int, default=None,
                   help="head dim of full-attention layers (default 2 x --head-dim, as the real model: 512 vs 256)")
    p.add_argument("--dense-width", type=int, default=256, help="dense MLP width beside the MoE")
    p.add_argument("--experts", type=int, default=32)
    p.add_argument("--top-k", type=int, default=4)
    p.add_argument("--expert-width", type=int, default=96)
    p.add_argument("--sliding-window", type=int, default=64)
    p.add_argument("--vision-hidden", type=int, default=96)
    p.add_argument("--vision-layers", type=int, default=3)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--tokens-per-batch", type=int, default=4096)
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--balance-coef", type=float, default=0.01)
    # Measured on 2 CPU cores, 20 steps of 4096-token batches: eager 0.95 s/step, grouped_mm
    # 1.05 s/step (both backward fine). Used for training only; the saved config forces nothing.
    p.add_argument("--experts-impl", default="eager", help="training only; not saved")
    p.add_argument("--warm-start", default=None,
                   help="an earlier text-only bundled model whose layers and matching embeddings to start from")
    p.add_argument("--init-from", default=None,
                   help="continue from a saved run of this script (same corpus and tokenizer)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-minutes", type=float, default=None,
                   help="safety stop on a busy machine: end training early (and say so in the log)")
    p.add_argument("--save-every", type=int, default=500, help="save a checkpoint every N steps")
    p.add_argument("--finish", default=None, help="evaluate a trained folder and write its model card, then exit")
    p.add_argument("--eval-items", type=int, default=40, help="items per task for --finish")
    args = p.parse_args()
    if args.finish:
        torch.set_num_threads(args.threads)
        finish(Path(args.finish), args.eval_items, Log(Path(args.log)))
        return

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    log = Log(Path(args.log))
    log(f"args: {json.dumps(vars(args))}")
    t0 = time.time()

    from reap_core.tiny import char_tokenizer

    rng = random.Random(args.seed)
    weights = {k: float(v) for k, v in (kv.split("=") for kv in args.domain_weights.split(",") if kv)}
    items = [it for d in toy_tasks.DOMAINS
             for it in toy_tasks.generate(d, round(args.per_domain * weights.get(d, 1.0)), args.seed)]
    examples = [(it, rng.random() < args.thinking_share) for it in items]
    rng.shuffle(examples)
    renderer = char_tokenizer()
    renderer.chat_template = CHAT_TEMPLATE

    def text_of(item, thinking):
        messages, tools, reply = prompt_and_reply(item, thinking)
        return renderer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False,
                                            enable_thinking=thinking) + reply

    if args.init_from:
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(args.init_from)
    else:
        tokenizer = train_tokenizer([text_of(it, th) for it, th in examples], args.vocab)
    log(f"corpus: {len(examples)} examples; tokenizer: {len(tokenizer)} tokens ({time.time() - t0:.0f}s)")
    improc = image_processor()
    soft_tokens = (64 // PATCH // POOL) ** 2
    encoded = [encode_example(tokenizer, it, th, soft_tokens) for it, th in examples]
    lengths = [len(e[0]) for e in encoded]
    log(f"tokens: total {sum(lengths)}, mean {sum(lengths) / len(lengths):.1f}, max {max(lengths)}"
        f" ({time.time() - t0:.0f}s)")
    pixels: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for i, (it, _) in enumerate(examples):
        if it.meta.get("image"):
            feats = improc(it.image, return_tensors="pt")
            assert int(feats["num_soft_tokens_per_image"][0]) == soft_tokens
            pixels[i] = (feats["pixel_values"][0], feats["image_position_ids"][0])
    log(f"images: {len(pixels)} ({time.time() - t0:.0f}s)")

    from transformers import Gemma4ForConditionalGeneration, GenerationConfig

    if args.init_from:
        model = Gemma4ForConditionalGeneration.from_pretrained(args.init_from, dtype=torch.float32)
        config = model.config
        log(f"initialised from {args.init_from}")
        if args.reinit_vision:
            fresh = Gemma4ForConditionalGeneration(config)
            with torch.no_grad():
                for name in ("vision_tower", "embed_vision"):
                    getattr(model.model, name).load_state_dict(getattr(fresh.model, name).state_dict())
            init_vision(model)
            log("vision tower and its projection re-initialised (init_vision)")
    else:
        config = build_config(args, tokenizer)
        model = Gemma4ForConditionalGeneration(config)
        init_vision(model)
        if args.warm_start:
            warm_start(model, args.warm_start, tokenizer, log)
    model.config.text_config._experts_implementation = args.experts_impl  # training speed only
    n_params = sum(p.numel() for p in model.parameters())
    n_expert = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    n_vision = sum(p.numel() for n, p in model.named_parameters() if "vision" in n)
    log(f"model: {n_params / 1e6:.2f}M params ({n_expert / 1e6:.2f}M in experts, {n_vision / 1e6:.2f}M vision), "
        f"{n_params * 4 / 2**20:.1f} MB float32")

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98), eps=1e-8)

    def lr_at(step: int) -> float:
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        progress = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))

    out_dir = Path(args.out)

    def save(tag: str) -> None:
        model.generation_config = GenerationConfig(
            bos_token_id=config.text_config.bos_token_id, eos_token_id=config.text_config.eos_token_id,
            pad_token_id=config.text_config.pad_token_id, do_sample=False, max_new_tokens=128)
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        list_control_tokens(out_dir)
        write_processor_config(out_dir, improc, soft_tokens)
        spell_out_head_dims(out_dir)
        log(f"saved ({tag}) to {out_dir}")

    meta_stopped = None
    tap = RouterTap(model)
    batch_rng = random.Random(args.seed)
    batches: list[list[int]] = []
    model.train()
    t_train = time.time()
    ema = None
    pad_id = config.text_config.pad_token_id
    for step in range(args.steps):
        if args.max_minutes and time.time() - t_train > args.max_minutes * 60:
            log(f"STOPPED EARLY at step {step}/{args.steps}: --max-minutes {args.max_minutes} reached")
            meta_stopped = step
            break
        if not batches:
            batches = make_batches(encoded, args.tokens_per_batch, batch_rng)
        batch = batches.pop()
        ids, mask, labels = collate(encoded, batch, pad_id)
        extra = {}
        with_images = [i for i in batch if i in pixels]
        if with_images:
            extra["pixel_values"] = torch.stack([pixels[i][0] for i in with_images])
            extra["image_position_ids"] = torch.stack([pixels[i][1] for i in with_images])
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        out = model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False, **extra)
        balance = tap.balance_loss(mask.bool())
        loss = out.loss + args.balance_coef * balance
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = out.loss.item() if ema is None else 0.95 * ema + 0.05 * out.loss.item()
        if step % 25 == 0 or step == args.steps - 1:
            el = time.time() - t_train
            log(f"step {step}/{args.steps} loss {out.loss.item():.4f} (ema {ema:.4f}) "
                f"balance {balance.item():.3f} lr {lr_at(step):.2e} batch {tuple(ids.shape)} "
                f"images {len(with_images)} {el / 60:.1f} min, eta {el / (step + 1) * (args.steps - step - 1) / 60:.1f} min")
        if args.save_every and step and step % args.save_every == 0:
            model.eval()
            save(f"step {step}")
            model.train()
    for h in tap.handles:
        h.remove()
    log(f"training done in {(time.time() - t_train) / 60:.1f} min")
    model.eval()
    save("final")
    earlier = Path(args.init_from or "") / "training_args.json"
    meta = {"args": vars(args), "params": n_params, "vision_params": n_vision,
            "stage1": json.loads(earlier.read_text()) if args.init_from and earlier.is_file() else None,
            "train_minutes": (time.time() - t_train) / 60, "final_loss_ema": ema,
            "stopped_early_at_step": meta_stopped}
    (out_dir / "training_args.json").write_text(json.dumps(meta, indent=2) + "\n")
    log(f"all done in {(time.time() - t0) / 60:.1f} min")


def list_control_tokens(out_dir: Path) -> None:
    """Every control token in tokenizer_config.json's extra_special_tokens (the media ones are named
    there already), so `all_special_ids` holds them all: llama.cpp's converter marks only those as
    control tokens, and would otherwise read a typed-looking "<|turn>" as plain text."""
    path = out_dir / "tokenizer_config.json"
    config = json.loads(path.read_text())
    named = set(MEDIA_TOKENS.values()) | {"<pad>", "<eos>", "<bos>", "<unk>", "<mask>"}
    config["extra_special_tokens"] = [t for t in SPECIAL_TOKENS if t not in named]
    path.write_text(json.dumps(config, indent=2) + "\n")


def spell_out_head_dims(out_dir: Path) -> None:
    """config.json with `global_head_dim` (as the real checkpoint has it: llama.cpp's converter reads it)
    instead of the empty `per_layer_config` transformers 5.23 writes, which it rebuilds from it on load."""
    path = out_dir / "config.json"
    config = json.loads(path.read_text())
    text = config["text_config"]
    if not text.get("per_layer_config"):
        text.pop("per_layer_config", None)
        text.setdefault("global_head_dim", text["head_dim"])
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def write_processor_config(out_dir: Path, improc, soft_tokens: int) -> None:
    """processor_config.json as the real Gemma 4 has it (image processor, audio feature extractor and
    video processor sections), so AutoProcessor builds a Gemma4Processor wherever torchvision is
    installed; reap_core.model loads the image part without it."""
    from transformers.models.gemma4.feature_extraction_gemma4 import Gemma4AudioFeatureExtractor

    image = {k: (list(v) if isinstance(v, tuple) else v) for k, v in improc.to_dict().items()}
    image["resample"] = int(image["resample"])
    video = {"video_processor_type": "Gemma4VideoProcessor", "patch_size": PATCH, "pooling_kernel_size": POOL,
             "max_soft_tokens": MAX_SOFT_TOKENS, "do_rescale": True, "rescale_factor": 1 / 255,
             "do_normalize": False, "do_convert_rgb": True}
    config = {"processor_class": "Gemma4Processor", "image_seq_length": soft_tokens,
              "image_processor": image, "feature_extractor": Gemma4AudioFeatureExtractor().to_dict(),
              "video_processor": video}
    (out_dir / "processor_config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
