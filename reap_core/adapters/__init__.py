"""Model-family adapters, registered by family name. Adding a family = adding one module here."""

from .base import ADAPTERS, MoEAdapter, MoELayout, find_adapter, get_by_path, register_adapter
from . import gemma4  # noqa: F401  (registers itself)

__all__ = ["ADAPTERS", "MoEAdapter", "MoELayout", "find_adapter", "get_by_path", "register_adapter"]
