"""Tiny random MoE models of every supported family and a character tokenizer, for tests and benchmarks.

Nothing can be downloaded on CI, so the engine is exercised on models built from configs here:
the real transformers classes (Gemma 4 text-only and multimodal, and one causal LM per family in
TINY_FAMILY_CONFIGS), random weights, the real code paths.
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


_TINY_COMMON = dict(vocab_size=128, hidden_size=32, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                    num_hidden_layers=2, max_position_embeddings=512, pad_token_id=0, eos_token_id=1, bos_token_id=2,
                    tie_word_embeddings=False)
# model_type -> the config keys that make a tiny model of that family exercise what matters to REAP:
# dense layers beside MoE ones, shared experts, selection bias, groups, expert biases.
TINY_FAMILY_CONFIGS: dict[str, dict] = {
    "qwen3_moe": dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=16, intermediate_size=48,
                      norm_topk_prob=True, num_hidden_layers=3, mlp_only_layers=[1]),
    "qwen2_moe": dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=16, intermediate_size=48,
                      shared_expert_intermediate_size=24, norm_topk_prob=False),
    "qwen3_next": dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=16, intermediate_size=48,
                       shared_expert_intermediate_size=24, norm_topk_prob=True,
                       layer_types=["linear_attention", "full_attention"], linear_num_value_heads=2,
                       linear_num_key_heads=1, linear_key_head_dim=8, linear_value_head_dim=8),
    "qwen3_5_moe_text": dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=16,
                             shared_expert_intermediate_size=24, layer_types=["linear_attention", "full_attention"],
                             linear_num_value_heads=2, linear_num_key_heads=1, linear_key_head_dim=8,
                             linear_value_head_dim=8),
    "glm4_moe": dict(n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=16, intermediate_size=48,
                     n_shared_experts=1, n_group=1, topk_group=1, first_k_dense_replace=1, num_hidden_layers=3,
                     routed_scaling_factor=2.5, norm_topk_prob=True),
    "deepseek_v3": dict(n_routed_experts=16, num_experts_per_tok=4, moe_intermediate_size=16, intermediate_size=48,
                        n_shared_experts=1, n_group=4, topk_group=2, first_k_dense_replace=1, num_hidden_layers=3,
                        routed_scaling_factor=2.5, norm_topk_prob=True, kv_lora_rank=16, q_lora_rank=None,
                        qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, head_dim=8,
                        num_key_value_heads=2),
    "minimax_m2": dict(num_local_experts=8, num_experts_per_tok=2, intermediate_size=16, rotary_dim=16),
    "gpt_oss": dict(num_local_experts=8, num_experts_per_tok=2, intermediate_size=16, sliding_window=16,
                    layer_types=["sliding_attention", "full_attention"]),
    "mixtral": dict(num_local_experts=8, num_experts_per_tok=2, intermediate_size=16),
    "olmoe": dict(num_experts=8, num_experts_per_tok=2, intermediate_size=16),
    "granitemoe": dict(num_local_experts=8, num_experts_per_tok=2, intermediate_size=16),
}


def build_tiny_family(model_type: str, seed: int = 0, dtype: torch.dtype = torch.float32,
                      device: str | torch.device = "cpu", **overrides) -> Any:
    """A tiny random causal LM of one family (TINY_FAMILY_CONFIGS), routers and experts spread apart."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if model_type not in TINY_FAMILY_CONFIGS:
        raise ValueError(f"no tiny config for {model_type!r}; known: {', '.join(TINY_FAMILY_CONFIGS)}")
    config = AutoConfig.for_model(model_type, **{**_TINY_COMMON, **TINY_FAMILY_CONFIGS[model_type], **overrides})
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config)
    _spread_router(model)
    return model.to(dtype).eval()


ROUTER_WEIGHTS = ("router.proj.weight", "mlp.gate.weight", "mlp.router.weight", "block_sparse_moe.router.weight")


def _spread_router(model: Any) -> None:
    """Random init gives near-uniform routing; sharper, varied router weights and per-expert scales
    make experts differ, so tests can tell criteria and plans apart."""
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(1234)
    rand = lambda *shape: torch.rand(shape, generator=gen, device=device)     # noqa: E731
    randn = lambda *shape: torch.randn(shape, generator=gen, device=device)   # noqa: E731
    for name, p in model.named_parameters():
        if name.endswith(ROUTER_WEIGHTS) and p.dim() == 2:
            p.data = randn(*p.shape) * 0.5
        elif name.endswith(("router.per_expert_scale", "mlp.router.bias")):
            p.data = rand(*p.shape) * 1.5 + 0.25
        elif name.endswith(("experts.gate_up_proj", "experts.down_proj", "experts.gate_up_proj_bias",
                            "experts.down_proj_bias")):
            p.data = randn(*p.shape) * 0.05 * (1 + rand(p.shape[0], *[1] * (p.dim() - 1)) * 3)
    for name, b in model.named_buffers():
        if name.endswith("e_score_correction_bias"):   # large enough to change which experts are chosen
            b.data = randn(*b.shape) * 0.3
