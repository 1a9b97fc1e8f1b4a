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
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reap_core import toy_tasks  # noqa: E402

# Gemma 4 style special tokens, ids fixed at the start of the vocabulary in this order.
SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<|turn>", "<turn|>", "<|think|>",
                  "<|channel>", "<channel|>"]

# The Gemma 4 turn format. Assistant turns are rendered as `model`; a system turn comes first
# (with `<|think|>` when enable_thinking is set, and the tools as JSON text when tools are given);
# tool calls and tool results are rendered as plain text so any chat data still renders.
CHAT_TEMPLATE = r"""{{- bos_token -}}
{%- set ns = namespace(system='') -%}
{%- if messages and messages[0]['role'] == 'system' -%}
{%- set ns.system = messages[0]['content'] if messages[0]['content'] is string else messages[0]['content'] | map(attribute='text') | join('') -%}
{%- set loop_messages = messages[1:] -%}
{%- else -%}
{%- set loop_messages = messages -%}
{%- endif -%}
{%- if ns.system or tools or enable_thinking -%}
{{- '<|turn>system\n' -}}
{%- if enable_thinking -%}{{- '<|think|>' -}}{%- endif -%}
{{- ns.system -}}
{%- if tools -%}
{%- if ns.system -%}{{- '\n' -}}{%- endif -%}
{{- 'Tools: ' -}}{{- tools | tojson -}}
{%- endif -%}
{{- '<turn|>\n' -}}
{%- endif -%}
{%- for message in loop_messages -%}
{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
{{- '<|turn>' + role + '\n' -}}
{%- if message['content'] is string -%}
{{- message['content'] -}}
{%- elif message['content'] -%}
{%- for part in message['content'] -%}{%- if part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}{%- endfor -%}
{%- endif -%}
{%- if message['tool_calls'] -%}
{%- for call in message['tool_calls'] -%}
{%- set fn = call['function'] if call['function'] is defined else call -%}
{%- if not loop.first or message['content'] -%}{{- '\n' -}}{%- endif -%}
{{- {'name': fn['name'], 'arguments': fn['arguments']} | tojson -}}
{%- endfor -%}
{%- endif -%}
{{- '<turn|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<|turn>model\n' -}}{%- endif -%}
"""


# ------------------------------------------------------------------------------------------
# Tokenizer: byte-level BPE trained on the rendered training corpus, digits split one by one
# (so numbers are sequences of digit tokens, which arithmetic needs).
# ------------------------------------------------------------------------------------------

def render(messages: list[dict]) -> str:
    """Plain-Python twin of CHAT_TEMPLATE for single-turn user/assistant data (tokenizer corpus)."""
    text = "<bos>"
    for m in messages:
        role = "model" if m["role"] == "assistant" else m["role"]
        text += f"<|turn>{role}\n{m['content']}<turn|>\n"
    return text


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
        unk_token="<unk>", extra_special_tokens=SPECIAL_TOKENS[4:], padding_side="left",
        model_max_length=1024,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def encode_conversation(tokenizer, messages: list[dict]) -> tuple[list[int], int]:
    """Token ids of a single-turn conversation and where the assistant answer starts."""
    prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    f_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    assert f_ids[: len(p_ids)] == p_ids, "prompt tokens must be a prefix of the full conversation"
    return f_ids, len(p_ids)


# ------------------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------------------

def build_config(args, tokenizer):
    from transformers import Gemma4TextConfig

    n = args.layers
    # Every third layer full attention (the real model has 5 sliding : 1 full); last is full.
    layer_types = ["full_attention" if (i + 1) % 3 == 0 or i == n - 1 else "sliding_attention"
                   for i in range(n)]
    ids = tokenizer.convert_tokens_to_ids
    return Gemma4TextConfig(
        vocab_size=len(tokenizer), hidden_size=args.hidden, intermediate_size=args.dense_width,
        num_hidden_layers=n, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        head_dim=args.head_dim, global_head_dim=args.head_dim, max_position_embeddings=1024,
        sliding_window=args.sliding_window, layer_types=layer_types,
        enable_moe_block=True, num_experts=args.experts, top_k_experts=args.top_k,
        moe_intermediate_size=args.expert_width, hidden_size_per_layer_input=0,
        vocab_size_per_layer_input=len(tokenizer), final_logit_softcapping=30.0,
        pad_token_id=ids("<pad>"), bos_token_id=ids("<bos>"),
        eos_token_id=[ids("<eos>"), ids("<turn|>")], tie_word_embeddings=True,
    )


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


def write_model_card(out_dir: Path, meta: dict, config) -> None:
    """README.md of the bundled folder: what the model is, how it was made, what it scores."""
    a = meta["args"]
    size_mb = sum(f.stat().st_size for f in out_dir.iterdir() if f.is_file()) / 2**20
    lines = [
        "---", "license: apache-2.0", "library_name: transformers", "pipeline_tag: text-generation",
        "tags: [gemma4, moe, toy, reap]", "---", "",
        "# toy-gemma4-moe",
        "",
        "A small Gemma 4 mixture-of-experts model trained from scratch by REAP Studio on a procedural,",
        "multi-domain chat corpus, bundled so the app and its tests work offline on a laptop CPU. Its",
        "answers can be checked by a program, so expert-pruning claims (which criterion keeps more, how",
        "much the calibration domain matters) can be tested in seconds. It knows nothing else.",
        "",
        "## Architecture",
        "",
        f"Stock `Gemma4ForCausalLM` (`Gemma4TextConfig`, `enable_moe_block=True`): {config.num_hidden_layers}"
        f" layers ({', '.join(config.layer_types)}; sliding window {config.sliding_window}), hidden"
        f" {config.hidden_size}, {config.num_attention_heads} heads / {config.num_key_value_heads} KV heads of"
        f" dim {config.head_dim}, dense MLP width {config.intermediate_size} beside an MoE block of"
        f" {config.num_experts} experts (width {config.moe_intermediate_size}, top-{config.top_k_experts})"
        f" in every layer, vocabulary {config.vocab_size} (byte-level BPE, digits split), tied embeddings,"
        f" no per-layer inputs. {meta['params'] / 1e6:.2f}M parameters, float32, {size_mb:.1f} MB.",
        "",
        "Chat format: Gemma 4 turns `<bos><|turn>user\\n...<turn|>\\n<|turn>model\\n...<turn|>\\n`;",
        "generation stops at `<turn|>` or `<eos>` (generation_config.json). Thinking tokens",
        "(`<|think|>`, `<|channel>`, `<channel|>`) exist in the vocabulary but were never trained.",
        "",
        "## Training data",
        "",
        "Five domains generated by `reap_core/toy_tasks.py` (seed "
        f"{a['seed']}, {a['per_domain']} conversations per domain), single-turn chats:",
        "",
        "| domain | task | check |",
        "|---|---|---|",
        "| math | word problems (add / subtract two-digit numbers, multiply digits), worked step, `The answer is N.` | final number |",
        "| code | small Python function from a one-line description | `ast.parse` + unit tests |",
        "| tools | one JSON tool call, given 3 tool schemas and a request | JSON equal to the expected call |",
        "| facts | capitals, continents, chemical symbols from a built-in table | exact answer |",
        "| translation | simple English sentences into Spanish | exact answer |",
        "",
        "Calibration sets (`assets/calibration/toy-<domain>.jsonl`) use another seed; the evaluation",
        "suite uses a third one.",
        "",
        "## Training",
        "",
        f"`python scripts/train_toy_model.py` (defaults): {a['steps']} steps of AdamW (lr {a['lr']}, cosine,"
        f" {a['warmup']} warm-up steps, weight decay 0.05) on batches of up to {a['tokens_per_batch']} tokens,"
        " loss on the assistant answers only, plus a Switch-style load-balancing loss"
        f" (coefficient {a['balance_coef']}) so every expert is used. {meta['train_minutes']:.0f} minutes on"
        f" {a['threads']} CPU threads. Seeded and reproducible on the same machine.",
        "",
    ]
    if meta.get("stage1"):
        s1 = meta["stage1"]
        lines[-1:] = [
            f" This was a second stage, continued from a first run (`--init-from`):", "",
            f"1. `python scripts/train_toy_model.py --out runs/toy-v1`: {s1['args']['steps']} steps,"
            f" lr {s1['args']['lr']}, {s1['train_minutes']:.0f} min"
            f" (held-out mean accuracy after it: {s1.get('eval', {}).get('mean_accuracy', float('nan')):.0%}).",
            f"2. `python scripts/train_toy_model.py --init-from runs/toy-v1 --steps {a['steps']} --lr {a['lr']}"
            f" --warmup {a['warmup']}`: {meta['train_minutes']:.0f} min.", "",
        ]
    if meta.get("stopped_early_at_step"):
        lines += [f"Stopped early at step {meta['stopped_early_at_step']} (`--max-minutes`, busy machine).", ""]
    if "eval" in meta:
        ev = meta["eval"]
        lines += ["## Evaluation", "",
                  f"Greedy, held-out items (seed {ev['seed']}), {next(iter(ev['per_domain'].values()))['total']}"
                  " per domain: `python -m reap_core eval --model assets/toy-gemma4-moe --suite toy`",
                  "", "| domain | accuracy |", "|---|---|"]
        lines += [f"| {d} | {v['correct']}/{v['total']} ({v['accuracy']:.0%}) |" for d, v in ev["per_domain"].items()]
        lines += [f"| **mean** | **{ev['mean_accuracy']:.0%}** |", ""]
    if "tokens_per_s" in meta:
        lines += [f"Generation speed: {meta['tokens_per_s']:.0f} tokens/s (CPU, {a['threads']} threads, float32,"
                  " greedy, batch 1, 64 new tokens).", ""]
    (out_dir / "README.md").write_text("\n".join(lines))


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
    p.add_argument("--out", default=str(ROOT / "assets" / "toy-gemma4-moe"))
    p.add_argument("--log", default=str(ROOT / "runs" / "toy_train.log"))
    p.add_argument("--seed", type=int, default=toy_tasks.TRAIN_SEED)
    p.add_argument("--per-domain", type=int, default=10000, help="training conversations per domain")
    p.add_argument("--vocab", type=int, default=3000)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=192)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=48)
    p.add_argument("--dense-width", type=int, default=256, help="dense MLP width beside the MoE")
    p.add_argument("--experts", type=int, default=32)
    p.add_argument("--top-k", type=int, default=4)
    p.add_argument("--expert-width", type=int, default=96)
    p.add_argument("--sliding-window", type=int, default=64)
    p.add_argument("--steps", type=int, default=750)
    p.add_argument("--tokens-per-batch", type=int, default=4096)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--balance-coef", type=float, default=0.01)
    # Measured on 2 CPU cores, 20 steps of 4096-token batches: eager 0.95 s/step, grouped_mm
    # 1.05 s/step (both backward fine). Used for training only; the saved config forces nothing.
    p.add_argument("--experts-impl", default="eager", help="training only; not saved")
    p.add_argument("--init-from", default=None,
                   help="continue from a saved folder (a second stage; architecture flags ignored)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-minutes", type=float, default=None,
                   help="safety stop on a busy machine: end training early (and say so in the log)")
    p.add_argument("--eval-items", type=int, default=40, help="per domain after training; 0 = skip")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    log = Log(Path(args.log))
    log(f"args: {json.dumps(vars(args))}")
    t0 = time.time()

    convs = toy_tasks.training_conversations(args.per_domain, seed=args.seed)
    tokenizer = train_tokenizer([render(c) for c in convs], args.vocab)
    log(f"corpus: {len(convs)} conversations; tokenizer: {len(tokenizer)} tokens")
    encoded = [encode_conversation(tokenizer, c) for c in convs]
    lengths = [len(e[0]) for e in encoded]
    log(f"tokens: total {sum(lengths)}, mean {sum(lengths) / len(lengths):.1f}, max {max(lengths)}"
        f" ({time.time() - t0:.0f}s)")

    from transformers import Gemma4ForCausalLM, GenerationConfig

    if args.init_from:
        # Continue training a saved run (same seed => same corpus and the same tokenizer).
        from transformers import AutoTokenizer

        saved_vocab = AutoTokenizer.from_pretrained(args.init_from).get_vocab()
        assert saved_vocab == tokenizer.get_vocab(), "--init-from model has another tokenizer"
        model = Gemma4ForCausalLM.from_pretrained(args.init_from, dtype=torch.float32)
        config = model.config
        log(f"initialised from {args.init_from}")
    else:
        config = build_config(args, tokenizer)
        model = Gemma4ForCausalLM(config)
    saved_impl = model.config._experts_implementation
    model.config._experts_implementation = args.experts_impl  # training speed only, not saved
    n_params = sum(p.numel() for p in model.parameters())
    n_expert = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    log(f"model: {n_params / 1e6:.2f}M params ({n_expert / 1e6:.2f}M in experts), "
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

    meta_stopped = None
    tap = RouterTap(model)
    rng = random.Random(args.seed)
    batches: list[list[int]] = []
    model.train()
    t_train = time.time()
    ema = None
    for step in range(args.steps):
        if args.max_minutes and time.time() - t_train > args.max_minutes * 60:
            log(f"STOPPED EARLY at step {step}/{args.steps}: --max-minutes {args.max_minutes} reached")
            meta_stopped = step
            break
        if not batches:
            batches = make_batches(encoded, args.tokens_per_batch, rng)
        ids, mask, labels = collate(encoded, batches.pop(), config.pad_token_id)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        out = model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False)
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
                f"{el / 60:.1f} min, eta {el / (step + 1) * (args.steps - step - 1) / 60:.1f} min")
    for h in tap.handles:
        h.remove()
    log(f"training done in {(time.time() - t_train) / 60:.1f} min")

    # Save: no forced experts implementation in the config; generation stops at <turn|> or <eos>.
    model.eval()
    model.config._experts_implementation = saved_impl  # (never serialised anyway)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id, do_sample=False, max_new_tokens=128)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    stage1 = None
    if args.init_from and (Path(args.init_from) / "training_args.json").exists():
        stage1 = json.loads((Path(args.init_from) / "training_args.json").read_text())
        stage1.pop("stage1", None)
    meta = {"args": vars(args), "stage1": stage1, "params": n_params,
            "train_minutes": (time.time() - t_train) / 60,
            "final_loss_ema": ema,
            "stopped_early_at_step": meta_stopped}
    (out_dir / "training_args.json").write_text(json.dumps(meta, indent=2) + "\n")
    log(f"saved to {out_dir}")

    if args.eval_items:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from reap_core.task_eval import run_suite

        m2 = AutoModelForCausalLM.from_pretrained(out_dir)
        t2 = AutoTokenizer.from_pretrained(out_dir)
        t_eval = time.time()
        result = run_suite(m2, t2, "toy", items_per_domain=args.eval_items)
        log(f"eval ({args.eval_items}/domain, {time.time() - t_eval:.0f}s):\n{result.format_table()}")
        meta["eval"] = result.to_dict()
        meta["tokens_per_s"] = measure_tokens_per_s(m2, t2)
        log(f"generation: {meta['tokens_per_s']:.1f} tokens/s (greedy, batch 1, 64 new tokens)")
        (out_dir / "training_args.json").write_text(json.dumps(meta, indent=2) + "\n")
    write_model_card(out_dir, meta, config)
    log(f"all done in {(time.time() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
