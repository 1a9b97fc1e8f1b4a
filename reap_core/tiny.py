"""Tiny random Gemma 4 MoE models and a character tokenizer, for tests and benchmarks.

Nothing can be downloaded on CI, so the engine is exercised on models built from configs here:
the real transformers classes (text-only and multimodal), random weights, the real code paths.
"""

from __future__ import annotations

import string
from typing import Any

import torch

GEMMA4_TURN_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "<|turn>{{ role }}\n{{ m['content'] if m['content'] is string else '' }}<turn|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|turn>model\n{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<|turn>", "<turn|>"]


def char_tokenizer(extra_special_tokens: dict[str, str] | None = None) -> Any:
    """A character-level fast tokenizer with Gemma 4 special tokens and turn-format chat template.
    `extra_special_tokens` (name -> token, e.g. a processor's image tokens) come right after them."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast

    specials = SPECIAL_TOKENS + list((extra_special_tokens or {}).values())
    vocab = {tok: i for i, tok in enumerate(specials)}
    for c in sorted(set(string.printable)):
        vocab.setdefault(c, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(specials)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>", **({"extra_special_tokens": extra_special_tokens}
                                                         if extra_special_tokens else {}))
    fast.chat_template = GEMMA4_TURN_TEMPLATE
    return fast


def tiny_text_config(vocab_size: int = 128, hidden: int = 64, layers: int = 3, experts: int = 16, top_k: int = 4,
                     expert_width: int = 32, dense_width: int = 96, heads: int = 2, head_dim: int = 32,
                     sliding_window: int = 16, kv_heads: int = 1) -> dict:
    layer_types = ["sliding_attention"] * (layers - 1) + ["full_attention"]
    return dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=dense_width, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim, global_head_dim=head_dim,
                enable_moe_block=True, num_experts=experts, top_k_experts=top_k, moe_intermediate_size=expert_width,
                hidden_size_per_layer_input=0, vocab_size_per_layer_input=vocab_size, sliding_window=sliding_window,
                layer_types=layer_types, pad_token_id=0, eos_token_id=1, bos_token_id=2, max_position_embeddings=4096)


def build_tiny_model(kind: str = "causal", seed: int = 0, dtype: torch.dtype = torch.float32,
                     device: str | torch.device = "cpu", **text_kwargs) -> Any:
    """kind 'causal' -> Gemma4ForCausalLM, 'multimodal' -> Gemma4ForConditionalGeneration (with vision tower).
    Built directly on `device` (a real-width layer stack for a GPU benchmark never passes through the CPU)."""
    from transformers import Gemma4Config, Gemma4ForCausalLM, Gemma4ForConditionalGeneration, Gemma4TextConfig

    text = tiny_text_config(**text_kwargs)
    torch.manual_seed(seed)
    if kind not in ("causal", "multimodal"):
        raise ValueError(f"kind must be 'causal' or 'multimodal', not {kind!r}")
    with torch.device(device):
        if kind == "causal":
            model = Gemma4ForCausalLM(Gemma4TextConfig(**text))
        else:
            vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                          num_key_value_heads=2, head_dim=16)
            model = Gemma4ForConditionalGeneration(Gemma4Config(text_config=text, vision_config=vision,
                                                                audio_config=None))
    _spread_router(model)
    return model.to(dtype).eval()


def _spread_router(model: Any) -> None:
    """Random init gives near-uniform routing; sharper, varied router weights and per-expert scales
    make experts differ, so tests can tell criteria and plans apart."""
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(1234)
    rand = lambda *shape: torch.rand(shape, generator=gen, device=device)     # noqa: E731
    randn = lambda *shape: torch.randn(shape, generator=gen, device=device)   # noqa: E731
    for name, p in model.named_parameters():
        if name.endswith("router.proj.weight"):
            p.data = randn(*p.shape) * 0.5
        elif name.endswith("router.per_expert_scale"):
            p.data = rand(*p.shape) * 1.5 + 0.25
        elif name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            p.data = randn(*p.shape) * 0.05 * (1 + rand(p.shape[0], 1, 1) * 3)
