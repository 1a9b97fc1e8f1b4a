"""Model-family adapters, registered by family name. Adding a family = adding one module here."""

from .base import ADAPTERS, MoEAdapter, MoELayout, find_adapter, get_by_path, register_adapter
# each module registers itself; Gemma 4 first (the app's default family)
from . import gemma4, qwen3_moe, qwen2_moe, qwen3_next, qwen3_5_moe, glm4_moe, deepseek_v3, minimax_m2  # noqa: F401
from . import gpt_oss, mixtral, olmoe, granitemoe  # noqa: F401

__all__ = ["ADAPTERS", "MoEAdapter", "MoELayout", "find_adapter", "get_by_path", "register_adapter"]
