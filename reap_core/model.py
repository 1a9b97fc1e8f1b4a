"""Stage 1 — load a model: Hub id or local folder in, `LoadedModel` (model + tokenizer + adapter) out.

The config is read first and the family adapter chosen from it, so an unsupported model is
refused before gigabytes of weights are read. Weights go through the Auto classes: loading the
multimodal Gemma 4 checkpoint into the text-only class would silently give random weights, so
missing weights are an error here, never a warning.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .adapters import MoEAdapter, find_adapter
from .errors import ModelLoadError, UnsupportedModel

REPO_ROOT = Path(__file__).resolve().parent.parent
ASSETS_DIR = REPO_ROOT / "assets"
BUNDLED_MODEL = "toy-gemma4-moe"  # the small model we train and ship (assets/toy-gemma4-moe)
BUNDLED_MODEL_DIR = ASSETS_DIR / BUNDLED_MODEL
GEMMA4_26B = "google/gemma-4-26b-a4b-it"

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model_path(model_id: str) -> str:
    """Accept the bundled model's short name, a local folder, or a Hub id (returned unchanged)."""
    model_id = (model_id or "").strip()
    if not model_id:
        raise ModelLoadError("no model given: pass a Hub id (e.g. google/gemma-4-26b-a4b-it) or a local folder")
    if model_id in (BUNDLED_MODEL, "bundled"):
        return str(BUNDLED_MODEL_DIR)
    return os.path.expanduser(model_id)


def _explain_load_failure(model_id: str, exc: Exception) -> ModelLoadError:
    """Turn transformers' many exception types for one user mistake into one clear sentence."""
    text = str(exc)
    first_line = text.splitlines()[0] if text else type(exc).__name__
    if Path(model_id).is_dir():
        return ModelLoadError(f"'{model_id}' is a folder but not a readable model: {first_line}")
    if model_id.startswith((".", "/", "~")) or model_id.count("/") > 1:
        return ModelLoadError(f"no such folder: '{model_id}'")
    lowered = text.lower()
    if "gated" in lowered or "401" in text or "403" in text:
        return ModelLoadError(f"'{model_id}' is gated or private: log in with a token that has access")
    if any(word in lowered for word in ("offline", "connect", "resolve", "network")):
        return ModelLoadError(f"could not reach the Hugging Face Hub for '{model_id}' (offline?); "
                              f"use a local folder or the bundled model '{BUNDLED_MODEL}'")
    return ModelLoadError(f"could not load '{model_id}': not a local folder, and not found on the Hub "
                          f"({first_line})")


def _probe_hub(repo_id: str, token: str | None) -> None:
    """Fail in a second with a clear reason, instead of transformers' minute of retries offline."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError

    try:
        HfApi().model_info(repo_id, token=token, timeout=10)
    except GatedRepoError:
        raise ModelLoadError(f"'{repo_id}' is gated: accept its license on the Hub and log in with a token") from None
    except RepositoryNotFoundError:
        raise ModelLoadError(f"no model '{repo_id}' on the Hub (or it is private and you are not logged in)") from None
    except HFValidationError:
        raise ModelLoadError(f"'{repo_id}' is neither a local folder nor a valid Hub model id") from None
    except Exception as exc:  # connection errors come from the HTTP client, not huggingface_hub
        raise ModelLoadError(f"could not reach the Hugging Face Hub for '{repo_id}' (offline?): "
                             f"use a local folder or the bundled model '{BUNDLED_MODEL}' ({type(exc).__name__})") from None


def load_config(model_id: str, trust_remote_code: bool = False, token: str | None = None) -> Any:
    from transformers import AutoConfig

    path = resolve_model_path(model_id)
    is_hub_id = not Path(path).exists() and path.count("/") <= 1 and not path.startswith((".", "/", "~"))
    if is_hub_id:
        try:  # already in the local Hub cache: works offline, no network round trip
            return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, token=token,
                                              local_files_only=True)
        except Exception:
            _probe_hub(path, token)
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, token=token)
    except Exception as exc:  # transformers raises OSError/ValueError/HF errors for the same user mistake
        raise _explain_load_failure(path, exc) from None


def pick_device_and_dtype(dtype: str = "auto", device: str = "auto") -> tuple[str, torch.dtype]:
    """bf16 on a GPU, float32 on CPU (CPU bf16 matmuls are slow and lossy), unless asked."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        torch_dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    elif dtype in DTYPES:
        torch_dtype = DTYPES[dtype]
    else:
        raise ModelLoadError(f"unknown dtype '{dtype}'; choose one of auto, {', '.join(DTYPES)}")
    return device, torch_dtype


@dataclass
class LoadedModel:
    """A model ready for calibration, masking and chat. One object is shared by all sessions."""

    model_id: str
    model: nn.Module
    tokenizer: Any
    processor: Any | None
    adapter: MoEAdapter
    dtype: torch.dtype
    device: str
    extras: dict = field(default_factory=dict)

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def num_experts(self) -> int:
        return self.adapter.num_experts(self.config)

    @property
    def top_k(self) -> int:
        return self.adapter.top_k(self.config)

    @property
    def num_layers(self) -> int:
        return self.adapter.num_layers(self.config)

    @property
    def moe_layer_indices(self) -> list[int]:
        return [i for i, _ in self.adapter.moe_layers(self.model)]

    @property
    def is_multimodal(self) -> bool:
        return getattr(self.config, "vision_config", None) is not None

    @property
    def input_device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    def memory_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())


def load_model(model_id: str, dtype: str = "auto", device: str = "auto", trust_remote_code: bool = False,
               token: str | None = None) -> LoadedModel:
    """Load a supported MoE model for pruning. Raises ModelLoadError / UnsupportedModel."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(model_id)
    config = load_config(path, trust_remote_code=trust_remote_code, token=token)
    adapter = find_adapter(config)  # refuses dense / unknown models before any weight is read
    device, torch_dtype = pick_device_and_dtype(dtype, device)
    kwargs: dict[str, Any] = dict(dtype=torch_dtype, trust_remote_code=trust_remote_code, token=token,
                                  output_loading_info=True)
    if device.startswith("cuda"):
        kwargs["device_map"] = "auto"  # accelerate spreads a model larger than one GPU over several
    try:
        model, info = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except Exception as exc:
        raise _explain_load_failure(path, exc) from None
    missing = [k for k in info.get("missing_keys", []) if "lm_head" not in k]
    if missing:
        raise ModelLoadError(f"'{model_id}': {len(missing)} weights missing from the checkpoint "
                             f"(e.g. {missing[0]}); they would be random — refusing to continue")
    if not device.startswith("cuda"):
        model.to(device)
    model.eval()
    adapter.prepare(model)
    if not adapter.moe_layers(model):
        raise UnsupportedModel(f"'{model_id}' loaded as {type(model).__name__} but has no MoE layers")

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, token=token)
    except Exception as exc:
        raise ModelLoadError(f"'{model_id}': the tokenizer could not be loaded ({exc})") from None
    processor = None
    if getattr(config, "vision_config", None) is not None:
        try:
            from transformers import AutoProcessor
            processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code, token=token)
        except Exception:
            processor = None  # text-only use still works; image chat will say it is unavailable
    return LoadedModel(model_id=model_id, model=model, tokenizer=tokenizer, processor=processor,
                       adapter=adapter, dtype=torch_dtype, device=device)


def wrap_model(model: nn.Module, tokenizer: Any, model_id: str = "in-memory") -> LoadedModel:
    """A LoadedModel around a model built in code (tests, benchmarks)."""
    adapter = find_adapter(model.config)
    adapter.prepare(model)
    param = next(model.parameters())
    return LoadedModel(model_id=model_id, model=model.eval(), tokenizer=tokenizer, processor=None,
                       adapter=adapter, dtype=param.dtype, device=str(param.device))
