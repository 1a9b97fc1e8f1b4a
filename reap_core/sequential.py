"""Layer-by-layer calibration: statistics of a model larger than the device, one decoder layer at a time.

How (the same for every family, no family code):
  1. load   transformers builds the model with every decoder layer offloaded to disk
            (`device_map` "disk": accelerate keeps a map to the checkpoint's own safetensors, and
            writes only the tensors transformers converts at load, e.g. one-expert tensors fused);
            embeddings, norms and rotary tables go to the device.
  2. record one pass of every calibration batch through that skeleton with each decoder layer
            replaced by a recorder that keeps the arguments the model hands it (attention masks,
            position embeddings, per-layer inputs: whatever the family passes) and returns its
            input unchanged; layer 0's inputs (the embeddings) are kept on the CPU.
  3. layers for each decoder layer: its weights onto the device once (accelerate's own offload
            hook), every batch through it under the observer (routed-expert statistics exactly as
            the one-pass observer records them), outputs kept on the CPU as the next layer's
            inputs, the weights dropped again.
Peak device memory: one decoder layer + one batch of activations; host memory: the hidden states
of the calibration set (tokens x hidden x 4 bytes, bf16 on GPUs: 2) + one layer in transit. The
batches are the one-pass observer's (same order, padding, shapes), so the statistics are the same
numbers (tests/test_sequential.py: every family, both Gemma 4 classes).

Rejected: accelerate's offload for the plain forward (weights cross the bus once per batch instead
of once per layer); re-implementing each family's preamble (masks, rotary, Gemma 4's per-layer
inputs) to feed layers by hand (the recorder takes whatever the model itself passes).
"""

from __future__ import annotations

import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .calibration import Batch, CalibrationSet, iter_batches
from .errors import ReapError
from .model import LoadedModel, load_model
from .observer import TOP_TOKENS_PER_EXPERT, _Accumulator, stats_from_accumulator
from .stats import ExpertStats

Progress = Callable[[int, int, int, int], None]     # (layers done, layers, batches done in this layer, batches)


class _Recorder(nn.Module):
    """Stands in for a decoder layer during the recording pass: keeps what it is called with and
    hands its input back. Attribute reads the model does on its layers go to the real layer."""

    def __init__(self, layer: nn.Module, calls: list):
        super().__init__()
        object.__setattr__(self, "_layer", layer)
        object.__setattr__(self, "_calls", calls)

    def __getattr__(self, name: str) -> Any:
        return getattr(object.__getattribute__(self, "_layer"), name)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        self._calls.append((hidden_states.shape, args, kwargs))
        return hidden_states


def available_host_memory() -> int:
    """Bytes the kernel says a new allocation can get (MemAvailable: free + reclaimable page cache)."""
    import os
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def weights_fit(model_id: str, dtype: str = "auto", device: str = "auto", trust_remote_code: bool = False,
                token: str | bool | None = None, allow_local_paths: bool = True) -> tuple[bool, str]:
    """(whether the weights fit the device with room to work — 85% of its free memory —, and a sentence
    saying how much they need and how much is free), from the config alone."""
    from .model import load_config, pick_device_and_dtype
    from .sizing import count_params

    config = load_config(model_id, trust_remote_code=trust_remote_code, token=token, allow_local_paths=allow_local_paths)
    device, torch_dtype = pick_device_and_dtype(dtype, device)
    need = count_params(config).total * (torch.finfo(torch_dtype).bits // 8)
    if device.startswith("cuda"):
        devices = range(torch.cuda.device_count()) if device == "cuda" else [torch.device(device)]
        free = sum(torch.cuda.mem_get_info(d)[0] for d in devices)
    else:
        free = available_host_memory()
    return need <= 0.85 * free, (f"the weights need about {need / 1e9:.1f} GB and {device} has {free / 1e9:.1f} GB "
                                 f"free")


def load_offloaded(model_id: str, dtype: str = "auto", device: str = "auto", offload_folder: str | Path | None = None,
                   trust_remote_code: bool = False, token: str | None = None,
                   allow_local_paths: bool = True) -> tuple[LoadedModel, Path]:
    """The model with every decoder layer on disk and the rest on `device` (model.load_model). Returns
    the LoadedModel and the temporary offload folder made under `offload_folder` (the caller removes it)."""
    folder = Path(tempfile.mkdtemp(prefix="reap-offload-", dir=offload_folder))
    try:
        loaded = load_model(model_id, dtype=dtype, device=device, trust_remote_code=trust_remote_code, token=token,
                            offload_layers_to=folder, allow_local_paths=allow_local_paths)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return loaded, folder


def _offload_hooks(layer: nn.Module) -> list:
    from accelerate.hooks import AlignDevicesHook

    hooks = []
    for module in layer.modules():
        hook = getattr(module, "_hf_hook", None)
        for h in getattr(hook, "hooks", None) or ([hook] if hook is not None else []):
            if isinstance(h, AlignDevicesHook) and h.offload:
                hooks.append((module, h))
    return hooks


class OnDevice:
    """Within the block the layer's weights are on its execution device, once, not per call."""

    def __init__(self, layer: nn.Module):
        self.hooks = _offload_hooks(layer)

    def __enter__(self):
        for module, hook in self.hooks:
            hook.pre_forward(module)
            hook.offload = False
        return self

    def __exit__(self, *exc):
        for module, hook in self.hooks:
            hook.offload = True
            hook.post_forward(module, None)      # back to the meta device: the memory is free again
        return False


def record_layer_inputs(loaded: LoadedModel, batches: list[Batch]
                        ) -> tuple[list[nn.Module], list[list], list[torch.Tensor]]:
    """One pass of calibration batches (their ids, masks and pictures) through the model with every decoder layer
    replaced by a _Recorder: (the real layers, per layer the (shape, args, kwargs) of every batch,
    layer 0's input hidden states per batch, on the CPU)."""
    model, device = loaded.model, loaded.input_device
    layer_list = loaded.adapter.layer_list(model)[1]
    real = list(layer_list)
    calls: list[list] = [[] for _ in real]
    hidden: list[torch.Tensor] = []
    capture_input = lambda module, args, kwargs: hidden.append(args[0].detach().to("cpu"))  # noqa: E731
    for i, layer in enumerate(real):
        layer_list[i] = _Recorder(layer, calls[i])
    handle = layer_list[0].register_forward_pre_hook(capture_input, with_kwargs=True)
    try:
        with torch.inference_mode():
            for batch in batches:
                model.model(**batch.model_inputs(device), use_cache=False)
    finally:
        handle.remove()
        for i, layer in enumerate(real):
            layer_list[i] = layer
    for i, per_batch in enumerate(calls):
        if [shape for shape, _, _ in per_batch] != [h.shape for h in hidden]:
            raise ReapError(f"layer {i} is not fed the previous layer's output unchanged in this model "
                            f"({type(model).__name__}); use the one-pass path instead")
    return real, calls, hidden


CHECKPOINT_FILE = "sequential-state.pt"


def observe_sequential(loaded: LoadedModel, calib: CalibrationSet, batch_size: int = 4,
                       progress: Progress | None = None,
                       top_tokens_per_expert: int = TOP_TOKENS_PER_EXPERT,
                       checkpoint_dir: str | Path | None = None, checkpoint_every_s: float = 600.0) -> ExpertStats:
    """The one-pass observer's statistics, computed one decoder layer at a time (module docstring).
    `loaded` comes from load_offloaded (layers on disk); a fully loaded model works too.

    checkpoint_dir: after a finished layer, at most every `checkpoint_every_s` seconds, the
    accumulators and the hidden states are saved there (atomically); a run given the same folder,
    model, calibration and batch size resumes after the last saved layer instead of starting over."""
    model, adapter = loaded.model, loaded.adapter
    device = loaded.input_device
    layer_rows = {idx: row for row, idx in enumerate(loaded.moe_layer_indices)}
    acc = _Accumulator(layer_rows, loaded.num_experts, len(calib.categories), device, top_tokens_per_expert)
    pad_id = loaded.tokenizer.pad_token_id
    pad_id = 0 if pad_id is None else pad_id
    batches = list(iter_batches(calib, batch_size, pad_id))

    real, calls, hidden = record_layer_inputs(loaded, batches)
    identity = {"model": loaded.model_id, "fingerprint": calib.fingerprint(), "batch_size": batch_size,
                "layers": len(real), "experts": loaded.num_experts, "top_tokens": top_tokens_per_expert}
    first = 0
    if checkpoint_dir is not None:
        saved = _load_checkpoint(Path(checkpoint_dir), identity)
        if saved is not None:
            first, hidden = saved["layers_done"], saved["hidden"]
            for name, t in {**acc.sums, **acc.maxes}.items():
                t.copy_(saved["acc"][name])
            acc.top_score.copy_(saved["acc"]["top_score"])
            acc.top_token.copy_(saved["acc"]["top_token"])

    start = last_saved = time.perf_counter()
    with torch.inference_mode(), adapter.observing(model, acc.record):
        for i, layer in enumerate(real):
            if i < first:                                  # done before the interruption
                calls[i] = []
                continue
            with OnDevice(layer):
                for b, (batch, (_, args, kwargs)) in enumerate(zip(batches, calls[i])):
                    acc.begin_batch(batch.attention_mask, batch.category_ids, batch.sample_ids, device)
                    out = layer(hidden[b].to(device), *args, **kwargs)
                    hidden[b] = (out[0] if isinstance(out, tuple) else out).to("cpu")
                    if progress:
                        progress(i, len(real), b + 1, len(batches))
            calls[i] = []                                  # this layer's masks and tables are done with
            if checkpoint_dir is not None and i + 1 < len(real) and \
                    time.perf_counter() - last_saved >= checkpoint_every_s:
                _save_checkpoint(Path(checkpoint_dir), identity, i + 1, hidden, acc)
                last_saved = time.perf_counter()
    del hidden
    stats = stats_from_accumulator(loaded, calib, acc, top_tokens_per_expert, samples=None)
    stats.calibration["sequential"] = {"layers": len(real), "batches": len(batches), "resumed_after_layers": first,
                                       "seconds": round(time.perf_counter() - start, 3)}
    return stats


def _save_checkpoint(folder: Path, identity: dict, layers_done: int, hidden: list[torch.Tensor], acc) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    state = {"identity": identity, "layers_done": layers_done, "hidden": hidden,
             "acc": {**{k: v.cpu() for k, v in {**acc.sums, **acc.maxes}.items()},
                     "top_score": acc.top_score.cpu(), "top_token": acc.top_token.cpu()}}
    tmp = folder / (CHECKPOINT_FILE + ".tmp")
    torch.save(state, tmp)
    tmp.replace(folder / CHECKPOINT_FILE)


def _load_checkpoint(folder: Path, identity: dict) -> dict | None:
    """The saved state if it belongs to this very run (model, calibration, batching), else None."""
    path = folder / CHECKPOINT_FILE
    if not path.is_file():
        return None
    try:
        state = torch.load(path, weights_only=True)    # tensors, lists and plain values only: no code runs
    except Exception as exc:     # a damaged file: start over rather than fail (it is rewritten)
        warnings.warn(f"ignoring the unreadable layer-by-layer checkpoint {path} ({type(exc).__name__})")
        return None
    if state.get("identity") != identity:
        return None
    return state
