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
import uuid
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
                token: str | bool | None = None, allow_local_paths: bool = True,
                device_bytes: int | None = None) -> tuple[bool, str]:
    """(whether the weights fit the device with room to work — 85% of its free memory —, and a sentence
    saying how much they need and how much is free), from the config alone. `device_bytes`: the device's
    memory where it cannot be asked (a ZeroGPU Space's main process has no GPU; each call gets 70 GB)."""
    from .model import load_config, pick_device_and_dtype
    from .sizing import count_params

    config = load_config(model_id, trust_remote_code=trust_remote_code, token=token, allow_local_paths=allow_local_paths)
    device, torch_dtype = pick_device_and_dtype(dtype, device)
    need = count_params(config).total * (torch.finfo(torch_dtype).bits // 8)
    if device_bytes is not None:
        free = device_bytes
    elif device.startswith("cuda"):
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

GpuCall = Callable[[Callable], Callable]
"""Makes a function run as one GPU call of its own, e.g. ZeroGPU's `spaces.GPU(duration=…)`: there the
call runs in a forked worker, its arguments and results are pickled across, and nothing it changes in
place comes back. observe_sequential hands such calls CPU tensors only and takes back what they return."""

_RUNS: dict[str, LoadedModel] = {}   # run key -> model, set before the first call: a forked worker inherits it


def _run_model(key: str) -> LoadedModel:
    try:
        return _RUNS[key]
    except KeyError:
        raise ReapError("this GPU worker was started before the calibration and does not hold the model; "
                        "start the calibration again") from None


def _move(tree: Any, device: torch.device | str) -> Any:
    """Every tensor in nested lists, tuples and dicts on `device`; a tensor met twice (the one mask every
    layer gets) stays one tensor."""
    from torch.utils._pytree import tree_map_only

    moved: dict[int, torch.Tensor] = {}
    return tree_map_only(torch.Tensor, lambda t: moved.setdefault(id(t), t.to(device)), tree)


def _record_step(key: str, batches: list[Batch], to_host: bool, expected_seconds: float = 0.0) -> tuple[list, list]:
    """GPU call 1: every decoder layer's call arguments per batch, and layer 0's inputs (CPU)."""
    _, calls, hidden = record_layer_inputs(_run_model(key), batches)
    return (_move(calls, "cpu") if to_host else calls), hidden


def _layer_step(key: str, first: int, last: int, hidden: list[torch.Tensor], calls: list[list],
                marks: list[tuple[torch.Tensor, ...]], state: dict[str, torch.Tensor], shape: tuple[int, int],
                to_host: bool, progress: Progress | None = None, expected_seconds: float = 0.0
                ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """GPU call per layer (or a few): decoder layers [first, last) over every batch, recording as the
    one-pass observer does. Returns the hidden states after layer `last` - 1 (CPU) and the accumulator
    state, on the CPU when `to_host` (what crosses a process boundary)."""
    loaded = _run_model(key)
    model, adapter, device = loaded.model, loaded.adapter, loaded.input_device
    layers = adapter.layer_list(model)[1]
    categories, top_n = shape
    acc = _Accumulator({idx: row for row, idx in enumerate(loaded.moe_layer_indices)}, loaded.num_experts,
                       categories, device, top_n)
    acc.load_state(state, device)
    hidden = list(hidden)
    with torch.inference_mode(), adapter.observing(model, acc.record):
        for i in range(first, last):
            with OnDevice(layers[i]):
                for b, ((mask, category_ids, sample_ids), (_, args, kwargs)) in enumerate(zip(marks, calls[i - first])):
                    acc.begin_batch(mask, category_ids, sample_ids, device)
                    args, kwargs = _move((args, kwargs), device)        # no copy where they already are
                    out = layers[i](hidden[b].to(device), *args, **kwargs)
                    hidden[b] = (out[0] if isinstance(out, tuple) else out).to("cpu")
                    if progress:
                        progress(i, len(layers), b + 1, len(marks))
    return hidden, acc.state("cpu" if to_host else None)


def observe_sequential(loaded: LoadedModel, calib: CalibrationSet, batch_size: int = 4,
                       progress: Progress | None = None,
                       top_tokens_per_expert: int = TOP_TOKENS_PER_EXPERT,
                       checkpoint_dir: str | Path | None = None, checkpoint_every_s: float = 600.0,
                       gpu_call: GpuCall | None = None, layers_per_call: int = 1) -> ExpertStats:
    """The one-pass observer's statistics, computed one decoder layer at a time (module docstring).
    `loaded` comes from load_offloaded (layers on disk); a fully loaded model works too.

    checkpoint_dir: after a finished layer, at most every `checkpoint_every_s` seconds, the
    accumulators and the hidden states are saved there (atomically); a run given the same folder,
    model, calibration and batch size resumes after the last saved layer instead of starting over.

    gpu_call (GpuCall): the GPU work runs as separate calls — the recording pass, then
    `layers_per_call` layers at a time — each handed CPU tensors and the statistics so far, and
    handing them back: a ZeroGPU Space's short `spaces.GPU` calls. Each call is given
    `expected_seconds` (1.5 × the slowest call so far + 10 s; 60 s at first) for the caller's
    duration estimate. Progress then comes once per call. None: everything in this process."""
    if layers_per_call < 1:
        raise ReapError(f"layers per call must be at least 1, not {layers_per_call}")
    isolated = gpu_call is not None
    call = gpu_call if isolated else (lambda fn: fn)
    device = "cpu" if isolated else loaded.input_device
    shape = (len(calib.categories), top_tokens_per_expert)
    layer_rows = {idx: row for row, idx in enumerate(loaded.moe_layer_indices)}
    state = _Accumulator(layer_rows, loaded.num_experts, shape[0], device, top_tokens_per_expert).state()
    pad_id = loaded.tokenizer.pad_token_id
    batches = list(iter_batches(calib, batch_size, 0 if pad_id is None else pad_id))
    marks = [(b.attention_mask, b.category_ids, b.sample_ids) for b in batches]
    n_layers = len(loaded.adapter.layer_list(loaded.model)[1])
    identity = {"model": loaded.model_id, "fingerprint": calib.fingerprint(), "batch_size": batch_size,
                "layers": n_layers, "experts": loaded.num_experts, "top_tokens": top_tokens_per_expert}

    key = uuid.uuid4().hex
    _RUNS[key] = loaded
    try:
        slowest = 0.0
        expect = lambda: 60.0 if slowest == 0 else 1.5 * slowest + 10   # noqa: E731
        calls, hidden = call(_record_step)(key, batches, isolated, expected_seconds=expect())
        first = 0
        saved = _load_checkpoint(Path(checkpoint_dir), identity) if checkpoint_dir is not None else None
        if saved is not None:
            first, hidden = saved["layers_done"], saved["hidden"]
            state = {name: t.to(device) for name, t in saved["acc"].items()}
        for i in range(first):                              # done before the interruption
            calls[i] = []

        start = last_saved = time.perf_counter()
        for lo in range(first, n_layers, layers_per_call):
            hi = min(n_layers, lo + layers_per_call)
            began = time.perf_counter()
            hidden, state = call(_layer_step)(key, lo, hi, hidden, calls[lo:hi], marks, state, shape, isolated,
                                              progress=None if isolated else progress, expected_seconds=expect())
            slowest = max(slowest, time.perf_counter() - began)
            calls[lo:hi] = [[] for _ in range(lo, hi)]      # these layers' masks and tables are done with
            if isolated and progress:
                progress(hi - 1, n_layers, len(batches), len(batches))
            if checkpoint_dir is not None and hi < n_layers and \
                    time.perf_counter() - last_saved >= checkpoint_every_s:
                _save_checkpoint(Path(checkpoint_dir), identity, hi, hidden, state)
                last_saved = time.perf_counter()
    finally:
        _RUNS.pop(key, None)
    del hidden
    acc = _Accumulator(layer_rows, loaded.num_experts, shape[0], device, top_tokens_per_expert)
    acc.load_state(state, device)
    stats = stats_from_accumulator(loaded, calib, acc, top_tokens_per_expert, samples=None)
    stats.calibration["sequential"] = {"layers": n_layers, "batches": len(batches), "resumed_after_layers": first,
                                       "seconds": round(time.perf_counter() - start, 3)}
    if isolated:
        stats.calibration["sequential"]["gpu_calls"] = 1 + -(-(n_layers - first) // layers_per_call)
    return stats


def _save_checkpoint(folder: Path, identity: dict, layers_done: int, hidden: list[torch.Tensor],
                     state: dict[str, torch.Tensor]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    state = {"identity": identity, "layers_done": layers_done, "hidden": hidden,
             "acc": {name: t.cpu() for name, t in state.items()}}
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
