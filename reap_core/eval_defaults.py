"""What "auto" means when evaluating a model: the data, prompts, suite and budgets that fit it.

The bundled toy model knows only its eight toy tasks, so it is evaluated on toy data; any other
model (a real chat model such as Gemma 4) on the built-in gemma4-bench and general prompts, with
a smaller batch (its vocabulary makes one batch's log-probs large, see fidelity.py).
"""

from __future__ import annotations

from pathlib import Path

from . import gemma_bench
from .errors import ReapError
from .model import BUNDLED_MODEL, BUNDLED_MODEL_DIR, LoadedModel, resolve_model_path


def is_bundled(loaded: LoadedModel) -> bool:
    """True for the bundled toy model, by name or by folder."""
    if loaded.model_id in (BUNDLED_MODEL, "bundled"):
        return True
    try:
        return Path(resolve_model_path(loaded.model_id)).resolve() == BUNDLED_MODEL_DIR.resolve()
    except (ReapError, OSError, RuntimeError):   # no usable id, or a path that cannot be resolved: not ours
        return False


def defaults_for(loaded: LoadedModel) -> dict:
    """Held-out source, prompt set, task suite, token budget and batch size that fit this model."""
    if is_bundled(loaded):
        return dict(heldout="toy", prompts="toy", suite="toy", max_new_tokens=96, batch_size=8)
    return dict(heldout=gemma_bench.NAME, prompts="general", suite=gemma_bench.NAME, max_new_tokens=256,
                batch_size=2)
