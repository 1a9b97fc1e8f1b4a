"""Layer-by-layer calibration = the one-pass observer, for both Gemma 4 classes and every family:
the same batches go through the same layers, so counts, sums, maxima and top tokens are identical
(the issue allows 1e-5 relative; this is bit for bit). Several batches (11 samples, batch size 3)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from reap_core.model import load_model
from reap_core.observer import observe
from reap_core.sequential import load_offloaded, observe_sequential
from reap_core.stats import ExpertStats
from reap_core.tiny import TINY_FAMILY_CONFIGS, build_tiny_family, build_tiny_model

KINDS = ["gemma4-causal", "gemma4-multimodal", *TINY_FAMILY_CONFIGS]


@pytest.mark.parametrize("kind", KINDS)
def test_sequential_equals_one_pass(kind, tokenizer, calib, tmp_path):
    model = (build_tiny_model(kind.split("-")[1], vocab_size=len(tokenizer)) if kind.startswith("gemma4")
             else build_tiny_family(kind, vocab_size=len(tokenizer)))
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    one_pass = observe(load_model(str(tmp_path / "model")), calib, batch_size=3)

    loaded, offload = load_offloaded(str(tmp_path / "model"), offload_folder=tmp_path)
    layers = loaded.adapter.decoder_layers(loaded.model)
    on_device = []

    def watch(layer, n_layers, batch, n_batches):   # only the layer being computed holds its weights
        on_device.append([next(p for p in lay.parameters()).device.type != "meta" for lay in layers])

    try:
        assert all(next(lay.parameters()).device.type == "meta" for lay in layers)
        layered = observe_sequential(loaded, calib, batch_size=3, progress=watch)
    finally:
        shutil.rmtree(offload)
    assert len(on_device) == len(layers) * 4                               # 11 samples in batches of 3
    assert all(flags == [i == n // 4 for i in range(len(layers))] for n, flags in enumerate(on_device))
    assert all(next(lay.parameters()).device.type == "meta" for lay in layers)
    for name, want in one_pass.arrays.items():
        np.testing.assert_array_equal(layered.arrays[name], want, err_msg=name)
    assert layered.top_tokens == one_pass.top_tokens
    assert layered.tokens_per_category == one_pass.tokens_per_category


def test_cli_sequential(tiny_dir, calib_file, tmp_path):
    from reap_core.cli import main

    common = ["--model", str(tiny_dir), "--calibration", str(calib_file), "--batch-size", "2"]
    assert main(["calibrate", *common, "--sequential", "--offload-dir", str(tmp_path),
                 "--out", str(tmp_path / "layered.npz")]) == 0
    assert main(["calibrate", *common, "--out", str(tmp_path / "one.npz")]) == 0
    layered, one = ExpertStats.load(tmp_path / "layered.npz"), ExpertStats.load(tmp_path / "one.npz")
    assert all(np.array_equal(layered.arrays[k], one.arrays[k]) for k in one.arrays)
    assert layered.calibration["sequential"]["layers"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layered.npz", "one.npz"]    # offload folder removed


def test_cli_goes_layer_by_layer_when_the_weights_do_not_fit(tiny_dir, calib_file, tmp_path, monkeypatch, capsys):
    import reap_core.cli as cli
    import reap_core.sequential as sequential

    monkeypatch.setattr(sequential, "available_host_memory", lambda: 1000)   # 1 kB free: nothing fits
    assert cli.main(["calibrate", "--model", str(tiny_dir), "--calibration", str(calib_file),
                     "--out", str(tmp_path / "auto.npz")]) == 0
    assert "calibrating layer by layer (--sequential)" in capsys.readouterr().out
    assert ExpertStats.load(tmp_path / "auto.npz").calibration["sequential"]["layers"] == 3


def test_an_interrupted_run_resumes_after_its_last_saved_layer(tiny_dir, calib, tmp_path):
    loaded, offload = load_offloaded(str(tiny_dir), offload_folder=tmp_path)
    try:
        whole = observe_sequential(loaded, calib, batch_size=3)

        def stop_in_layer_2(layer, layers, batch, batches):
            if layer == 2 and batch == 2:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            observe_sequential(loaded, calib, batch_size=3, checkpoint_dir=tmp_path / "resume", checkpoint_every_s=0,
                               progress=stop_in_layer_2)
        seen = []
        resumed = observe_sequential(loaded, calib, batch_size=3, checkpoint_dir=tmp_path / "resume",
                                     progress=lambda layer, *_: seen.append(layer))
        other_batches = observe_sequential(loaded, calib, batch_size=4, checkpoint_dir=tmp_path / "resume")
    finally:
        shutil.rmtree(offload)
    assert set(seen) == {2} and resumed.calibration["sequential"]["resumed_after_layers"] == 2
    assert other_batches.calibration["sequential"]["resumed_after_layers"] == 0     # another run: not resumed
    for name, want in whole.arrays.items():
        np.testing.assert_array_equal(resumed.arrays[name], want, err_msg=name)
    assert resumed.top_tokens == whole.top_tokens


def zero_gpu_stub():
    """tests/fixtures/zero_gpu/spaces: spaces.GPU as on a ZeroGPU Space (a forked worker per call)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent / "fixtures" / "zero_gpu" / "spaces" / "__init__.py"
    spec = importlib.util.spec_from_file_location("zero_gpu_stub_spaces", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("layers_per_call", [1, 2])
def test_zero_gpu_calls_keep_the_statistics_between_calls(layers_per_call, tiny_dir, calib, tmp_path):
    """ZeroGPU (issue 14 part 5): the recording pass and each layer (or two) are separate calls in forked
    workers; the statistics cross back each time and equal one pass's, while this process's layers
    never leave the disk."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)     # as in the workers (forked torch runs one thread): the same float32 rounding
    try:
        one_pass = observe(load_model(str(tiny_dir)), calib, batch_size=3)
    finally:
        torch.set_num_threads(threads)
    loaded, offload = load_offloaded(str(tiny_dir), offload_folder=tmp_path)
    layers = loaded.adapter.decoder_layers(loaded.model)
    seen = []
    spaces = zero_gpu_stub()
    gpu_call = lambda fn: spaces.GPU(fn, duration=lambda *a, expected_seconds=0, **k: expected_seconds)  # noqa: E731
    try:
        layered = observe_sequential(loaded, calib, batch_size=3, gpu_call=gpu_call,
                                     layers_per_call=layers_per_call, progress=lambda *a: seen.append(a))
    finally:
        shutil.rmtree(offload)
    expected_calls = 1 + -(-len(layers) // layers_per_call)
    durations = [c["duration"] for c in spaces.CALLS]
    assert len(durations) == expected_calls == layered.calibration["sequential"]["gpu_calls"]
    assert durations[0] == 60.0 and all(s > 10 for s in durations[1:])      # a duration for every call
    assert [a[0] for a in seen] == list(range(len(layers)))[layers_per_call - 1::layers_per_call] + \
        ([len(layers) - 1] if len(layers) % layers_per_call else [])
    assert all(next(lay.parameters()).device.type == "meta" for lay in layers)
    for name, want in one_pass.arrays.items():
        np.testing.assert_array_equal(layered.arrays[name], want, err_msg=name)
    assert layered.top_tokens == one_pass.top_tokens


def test_a_gpu_worker_without_the_model_says_so(tiny_dir, calib, tmp_path):
    """A worker forked before the calibration began (spaces may reuse one) has no model: a clear error."""
    from reap_core import sequential
    from reap_core.errors import ReapError

    loaded, offload = load_offloaded(str(tiny_dir), offload_folder=tmp_path)

    def stale_worker(fn):
        def call(*args, **kwargs):
            saved = dict(sequential._RUNS)
            sequential._RUNS.clear()
            try:
                return fn(*args, **kwargs)
            finally:
                sequential._RUNS.update(saved)
        return call

    try:
        with pytest.raises(ReapError, match="does not hold the model"):
            observe_sequential(loaded, calib, batch_size=3, gpu_call=stale_worker)
    finally:
        shutil.rmtree(offload)
    assert sequential._RUNS == {}
