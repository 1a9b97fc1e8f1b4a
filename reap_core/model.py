"""Stage 1 — load a model: Hub id or local folder in, `LoadedModel` (model + tokenizer + adapter) out.

The config is read first and the family adapter chosen from it, so an unsupported model is
refused before gigabytes of weights are read. Weights go through the Auto classes: loading the
multimodal Gemma 4 checkpoint into the text-only class would silently give random weights, so
missing weights are an error here, never a warning.

Two modes. Locally a model is a folder or a Hub id, and transformers tells them apart by looking
at the disk. On a public server (allow_local_paths=False) a visitor names no server path: only the
bundled model or a Hub id, whose files are fetched into the Hub cache with the visitor's token (or
none: token=False) and read from there, so a Hub id never reads a same-named folder on the server.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .adapters import MoEAdapter, find_adapter
from .errors import ModelLoadError, UnsupportedModel
from .processors import load_processor

REPO_ROOT = Path(__file__).resolve().parent.parent
ASSETS_DIR = REPO_ROOT / "assets"
BUNDLED_MODEL = "toy-gemma4-moe"  # the small model we train and ship (assets/toy-gemma4-moe)
BUNDLED_MODEL_DIR = ASSETS_DIR / BUNDLED_MODEL
GEMMA4_26B = "google/gemma-4-26b-a4b-it"

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# token: None = the token saved on this machine (`hf auth login`, HF_TOKEN); False = no token at all,
# not even those (a public server reading a model for a visitor who is not signed in); str = this token.
Token = str | bool | None
SERVER_PATHS_REFUSED = ("server paths are not accepted here: choose the bundled model or type a Hub model id "
                        "(org/name)")
# What a Hub model needs on disk in public mode: configs, safetensors weights, tokenizer and chat
# template files, top-level only (no pickled *.bin, no copies in subfolders); *.py only with remote code.
HUB_CONFIG_FILES = ("config.json",)
HUB_MODEL_FILES = ("*.json", "*.safetensors", "*.jinja", "*.model", "*.txt", "*.tiktoken")


def looks_like_path(text: str) -> bool:
    """Path-shaped, not Hub-id-shaped: a leading / . ~, a backslash, or more than one slash."""
    return text.startswith((".", "/", "~")) or "\\" in text or text.count("/") > 1


def resolve_model_path(model_id: str, allow_local_paths: bool = True) -> str:
    """The bundled model's short name -> its folder; anything else is returned as a local folder
    (with ~ expanded) or a Hub id, which transformers tells apart by looking at the disk.

    With allow_local_paths=False (a public server: a visitor must not read the server's files, nor
    learn which exist) only the bundled name and syntactically valid Hub ids are accepted, and a
    path-like string gets one message that never depends on what is on disk. The returned Hub id
    must then not be handed to transformers as is (it would read a same-named folder relative to the
    working directory): load_config / load_model fetch it into the Hub cache first."""
    model_id = (model_id or "").strip()
    if not model_id:
        raise ModelLoadError("no model given: pass a Hub id (e.g. google/gemma-4-26b-a4b-it) or a local folder"
                             if allow_local_paths else "no model given: choose the bundled model or type a Hub "
                             "model id (org/name)")
    if model_id in (BUNDLED_MODEL, "bundled"):
        return str(BUNDLED_MODEL_DIR)
    if allow_local_paths:
        return os.path.expanduser(model_id)
    if looks_like_path(model_id):
        raise ModelLoadError(SERVER_PATHS_REFUSED)
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(model_id)
    except HFValidationError:
        raise ModelLoadError(f"'{model_id[:100]}' is not a valid Hub model id: use org/name (letters, digits, "
                             f"'-', '_', '.'), or choose the bundled model") from None
    return model_id


def _read_errors() -> tuple[type[BaseException], ...]:
    """What transformers raises for a model it cannot read — a missing or unreadable file, a bad
    config, a Hub refusal (huggingface_hub's errors are OSErrors), a damaged safetensors file.
    Anything else (a TypeError, a KeyError deep in a modeling file) is a bug and stays a traceback."""
    from safetensors import SafetensorError

    return OSError, ValueError, SafetensorError


def _out_of_memory(model_id: str, device: str, exc: BaseException) -> ModelLoadError:
    return ModelLoadError(f"not enough memory to load '{model_id}' on {device} ({type(exc).__name__}): choose a "
                          f"smaller model, a GPU with more memory, or calibrate with the CLI on a bigger machine")


def _explain_load_failure(model_id: str, exc: Exception, local_paths: bool = True) -> ModelLoadError:
    """Turn transformers' many exception types for one user mistake into one clear sentence.
    Without local_paths (public mode) the message never depends on the server's disk."""
    text = str(exc)
    first_line = text.splitlines()[0] if text else type(exc).__name__
    if local_paths and Path(model_id).is_dir():
        return ModelLoadError(f"'{model_id}' is a folder but not a readable model: {first_line}")
    if local_paths and (model_id.startswith((".", "/", "~")) or model_id.count("/") > 1):
        return ModelLoadError(f"no such folder: '{model_id}'")
    lowered = text.lower()
    if "gated" in lowered or "401" in text or "403" in text:
        return ModelLoadError(f"'{model_id}' is gated or private: log in with a token that has access")
    if any(word in lowered for word in ("offline", "connect", "resolve", "network")):
        return ModelLoadError(f"could not reach the Hugging Face Hub for '{model_id}' (offline?); "
                              f"use a local folder or the bundled model '{BUNDLED_MODEL}'")
    if not local_paths:
        return ModelLoadError(f"could not load '{model_id}' from the Hub ({first_line})")
    return ModelLoadError(f"could not load '{model_id}': not a local folder, and not found on the Hub "
                          f"({first_line})")


def _probe_hub(repo_id: str, token: Token) -> None:
    """Fail in a second with a clear reason, instead of transformers' minute of retries offline.
    token=False sends no token at all (huggingface_hub would otherwise send the saved one)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError

    try:
        HfApi(token=token).model_info(repo_id, token=token, timeout=10)
    except GatedRepoError:
        raise ModelLoadError(f"'{repo_id}' is gated: accept its license on the Hub and log in with a token") from None
    except RepositoryNotFoundError:
        raise ModelLoadError(f"no model '{repo_id}' on the Hub (or it is private and you are not logged in)") from None
    except HFValidationError:
        raise ModelLoadError(f"'{repo_id}' is neither a local folder nor a valid Hub model id") from None
    except Exception as exc:  # connection errors come from the HTTP client, not huggingface_hub
        raise ModelLoadError(f"could not reach the Hugging Face Hub for '{repo_id}' (offline?): "
                             f"use a local folder or the bundled model '{BUNDLED_MODEL}' ({type(exc).__name__})") from None


def _hub_snapshot(repo_id: str, token: Token, files: tuple[str, ...], trust_remote_code: bool,
                  probe: bool = True) -> str:
    """Public mode: the Hub cache folder holding `files` of `repo_id`, fetched with `token` only.

    An absolute cache path is what transformers then reads, so a Hub id is never looked up as a
    folder on the server. The Hub is asked every time, even when the files are cached: the cache
    may hold a private or gated model that another token fetched, and this token must have access."""
    from huggingface_hub import snapshot_download

    if probe:
        _probe_hub(repo_id, token)
    patterns = list(files) + (["*.py"] if trust_remote_code else [])
    try:
        return snapshot_download(repo_id, token=token, allow_patterns=patterns, ignore_patterns=["*/*"])
    except Exception as exc:  # after a successful probe: the network or the disk, not the user's input
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ModelLoadError(f"could not download '{repo_id}' from the Hugging Face Hub: "
                             f"{type(exc).__name__} {first[:160]}".rstrip()) from None


@dataclass(frozen=True)
class _Source:
    """Where transformers reads a model from, and how to talk about it in messages."""

    path: str          # a folder, or (local mode only) a Hub id transformers resolves itself
    public: bool       # allow_local_paths=False: messages never depend on the server's disk
    hub_id: str | None = None   # public mode: the Hub id `path` is a snapshot of


def _source(model_id: str, token: Token, trust_remote_code: bool, allow_local_paths: bool,
            files: tuple[str, ...]) -> _Source:
    path = resolve_model_path(model_id, allow_local_paths=allow_local_paths)
    if allow_local_paths or path == str(BUNDLED_MODEL_DIR):
        return _Source(path, public=not allow_local_paths)
    return _Source(_hub_snapshot(path, token, files, trust_remote_code), public=True, hub_id=path)


def _failure(source: _Source, exc: Exception) -> ModelLoadError:
    """The clear message for a failed read; in public mode it names the Hub id, never the cache folder."""
    if source.hub_id is None:
        return _explain_load_failure(source.path, exc, local_paths=not source.public)
    return _explain_load_failure(source.hub_id, RuntimeError(_scrub_path(source, exc)), local_paths=False)


def _scrub_path(source: _Source, exc: Exception) -> str:
    return str(exc).replace(source.path, source.hub_id) if source.hub_id else str(exc)


def _read_config(source: _Source, trust_remote_code: bool, token: Token) -> Any:
    from transformers import AutoConfig

    path = source.path
    is_hub_id = (not source.public and not Path(path).exists() and path.count("/") <= 1
                 and not path.startswith((".", "/", "~")))
    if is_hub_id:
        try:  # already in the local Hub cache: works offline, no network round trip
            return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, token=token,
                                              local_files_only=True)
        except Exception:
            _probe_hub(path, token)
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, token=token)
    except _read_errors() as exc:  # transformers raises OSError/ValueError/HF errors for the same user mistake
        raise _failure(source, exc) from None


def load_config(model_id: str, trust_remote_code: bool = False, token: Token = None,
                allow_local_paths: bool = True) -> Any:
    """The model's config alone (no weights): enough to refuse an unsupported model and to plan sizes.
    `token` and `allow_local_paths` as in load_model."""
    source = _source(model_id, token, trust_remote_code, allow_local_paths, HUB_CONFIG_FILES)
    return _read_config(source, trust_remote_code, token)


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
    read_from: str | None = None       # the folder (or, locally, the Hub id) the weights came from
    processor_error: str | None = None  # why a multimodal model has no processor (image input is off)

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
               token: Token = None, allow_local_paths: bool = True,
               offload_layers_to: str | Path | None = None) -> LoadedModel:
    """Load a supported MoE model for pruning. Raises ModelLoadError / UnsupportedModel.

    token: None = the saved token, False = none at all, a string = that token (see `Token`).
    allow_local_paths=False (public mode): only the bundled model and Hub ids, see resolve_model_path.
    offload_layers_to: a folder: every decoder layer stays on disk (accelerate's offload, read from the
    checkpoint's own files where no conversion is needed), the rest goes to `device`; for
    reap_core.sequential, which brings one layer at a time onto the device.
    The config is read and the adapter chosen first: a dense or unknown model is refused before any
    weight is read (or, in public mode, downloaded)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = _source(model_id, token, trust_remote_code, allow_local_paths, HUB_CONFIG_FILES)
    config = _read_config(source, trust_remote_code, token)
    adapter = find_adapter(config)  # refuses dense / unknown models before any weight is read
    if source.hub_id is not None:   # public mode: now fetch the weights and tokenizer too (access checked)
        folder = _hub_snapshot(source.hub_id, token, HUB_MODEL_FILES, trust_remote_code, probe=False)
        source = _Source(folder, public=True, hub_id=source.hub_id)
    path = source.path
    device, torch_dtype = pick_device_and_dtype(dtype, device)
    kwargs: dict[str, Any] = dict(dtype=torch_dtype, trust_remote_code=trust_remote_code, token=token,
                                  output_loading_info=True)
    if offload_layers_to is not None:
        kwargs.update(device_map=layers_on_disk(config, adapter, device), offload_folder=str(offload_layers_to))
    elif device.startswith("cuda"):    # "cuda": accelerate spreads a model larger than one GPU over several;
        kwargs["device_map"] = "auto" if device == "cuda" else {"": device}   # "cuda:1": that one (a torchrun rank)
    try:
        model, info = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (MemoryError, torch.OutOfMemoryError) as exc:   # the truth, not "not found on the Hub"
        raise _out_of_memory(model_id, device, exc) from None
    except _read_errors() as exc:
        raise _failure(source, exc) from None
    missing = [k for k in info.get("missing_keys", []) if "lm_head" not in k]
    if missing:
        raise ModelLoadError(f"'{model_id}': {len(missing)} weights missing from the checkpoint "
                             f"(e.g. {missing[0]}); they would be random — refusing to continue")
    if not device.startswith("cuda") and offload_layers_to is None:
        model.to(device)
    model.eval()
    adapter.prepare(model)
    if not adapter.moe_layers(model):
        raise UnsupportedModel(f"'{model_id}' loaded as {type(model).__name__} but has no MoE layers")

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, token=token)
    except _read_errors() as exc:
        raise ModelLoadError(f"'{model_id}': the tokenizer could not be loaded "
                             f"({_scrub_path(source, exc)})") from None
    processor, processor_error = None, None
    if getattr(config, "vision_config", None) is not None:
        try:   # without torchvision: the processor minus its video part (processors.py)
            processor, _ = load_processor(path, trust_remote_code=trust_remote_code, token=token)
        except (*_read_errors(), ImportError) as exc:  # text use still works; the reason is shown with the model
            processor_error = f"{type(exc).__name__}: {_scrub_path(source, exc).splitlines()[0][:200]}"
    # read_from: in public mode the Hub cache snapshot, which an export streams from instead of
    # resolving model_id again on this disk.
    return LoadedModel(model_id=model_id, model=model, tokenizer=tokenizer, processor=processor,
                       adapter=adapter, dtype=torch_dtype, device=device, read_from=path,
                       processor_error=processor_error)


def layers_on_disk(config: Any, adapter: Any, device: str) -> dict[str, str]:
    """A device_map with every decoder layer on "disk" and every other module on `device`, from the
    config alone (the model is built on the meta device to find the module names)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    path, layers = adapter.layer_list(skeleton)
    device_map, node, prefix = {}, skeleton, ""
    for part in path.split("."):        # every sibling on the way down to the layer list: the device
        device_map.update({prefix + name: device for name, _ in node.named_children() if name != part})
        node, prefix = getattr(node, part), prefix + part + "."
    device_map.update({f"{path}.{i}": "disk" for i in range(len(layers))})
    return device_map


def wrap_model(model: nn.Module, tokenizer: Any, model_id: str = "in-memory") -> LoadedModel:
    """A LoadedModel around a model built in code (tests, benchmarks)."""
    adapter = find_adapter(model.config)
    adapter.prepare(model)
    param = next(model.parameters())
    return LoadedModel(model_id=model_id, model=model.eval(), tokenizer=tokenizer, processor=None,
                       adapter=adapter, dtype=param.dtype, device=str(param.device))
