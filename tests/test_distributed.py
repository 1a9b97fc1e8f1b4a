"""Calibration split across processes equals one run: shard files merged, and torchrun ranks reduced.

With batch size 1 every sample is computed exactly as in a single run, so only the order of the
float64 additions differs: counts and maxima must be identical, sums equal to 1e-12 relative, and
the top tokens of every expert the same."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from reap_core.calibration import build_calibration
from reap_core.distributed import merge_stats, parse_shard, shard_samples
from reap_core.errors import InvalidPlan, StatisticsError
from reap_core.model import load_model
from reap_core.observer import observe
from reap_core.plan import make_plan
from reap_core.stats import MAX_STATS, ExpertStats

ROOT = Path(__file__).resolve().parent.parent


def assert_same_statistics(got: ExpertStats, want: ExpertStats) -> None:
    assert (got.layer_indices, got.num_experts, got.categories) == (want.layer_indices, want.num_experts, want.categories)
    assert got.tokens_per_category == want.tokens_per_category
    for name, expected in want.arrays.items():
        if name == "count" or name in MAX_STATS:
            np.testing.assert_array_equal(got.arrays[name], expected, err_msg=name)
        else:
            np.testing.assert_allclose(got.arrays[name], expected, rtol=1e-12, atol=0, err_msg=name)
    assert got.top_tokens == want.top_tokens
    assert {k: v for k, v in got.calibration.items()} == {k: v for k, v in want.calibration.items()}


def test_shards_take_every_nth_sample_of_the_length_order():
    lengths = [5, 50, 7, 30, 9, 1]               # length order: 1, 3, 4, 2, 0, 5
    assert shard_samples(lengths, 0, 2) == [0, 1, 4]      # positions 0, 2, 4 of that order
    assert shard_samples(lengths, 1, 2) == [2, 3, 5]
    assert sorted(shard_samples(lengths, 0, 3) + shard_samples(lengths, 1, 3) + shard_samples(lengths, 2, 3)) \
        == list(range(6))
    assert parse_shard("2/3") == (1, 3)
    for bad in ("0/3", "4/3", "1/0", "a/b", "2"):
        with pytest.raises(StatisticsError):
            parse_shard(bad)


def test_merged_shard_files_equal_one_run(tiny, calib, tmp_path):
    whole = observe(tiny, calib, batch_size=1)
    files = []
    for i in (1, 0, 2):                                    # any order
        part = observe(tiny, calib, batch_size=1, shard=(i, 3))
        assert part.calibration["shard"] == [i, 3]
        files.append(part.save(tmp_path / f"part{i}.npz"))
    parts = [ExpertStats.load(f) for f in files]
    with pytest.raises(InvalidPlan, match="one shard of a calibration"):
        make_plan(parts[0], 0.5)
    merged = merge_stats(parts)
    assert_same_statistics(merged, whole)
    make_plan(merged, 0.5)


def test_merge_refuses_what_does_not_belong_together(tiny, calib):
    parts = [observe(tiny, calib, batch_size=2, shard=(i, 2), top_tokens_per_expert=2) for i in range(2)]
    with pytest.raises(StatisticsError, match="each of the shards 1/2 … 2/2 exactly once"):
        merge_stats([parts[0], parts[0]])
    with pytest.raises(StatisticsError, match="exactly once"):
        merge_stats([parts[0]])
    with pytest.raises(StatisticsError, match="different runs: model"):
        merge_stats([parts[0], replace(parts[1], model_id="another-model")])
    other_calibration = {**parts[1].calibration, "fingerprint": "0123456789abcdef"}
    with pytest.raises(StatisticsError, match="calibration fingerprint"):
        merge_stats([parts[0], replace(parts[1], calibration=other_calibration)])
    with pytest.raises(StatisticsError, match="different runs: MoE layers"):
        merge_stats([parts[0], replace(parts[1], layer_indices=[9, 10, 11])])
    whole = observe(tiny, calib, batch_size=2, top_tokens_per_expert=2)
    with pytest.raises(StatisticsError, match="not a shard"):
        merge_stats([whole, parts[1]])


def test_cli_shards_and_merge_stats(tiny_dir, calib_file, tmp_path):
    from reap_core.cli import main

    common = ["--model", str(tiny_dir), "--calibration", str(calib_file), "--batch-size", "1"]
    assert main(["calibrate", *common, "--out", str(tmp_path / "whole.npz")]) == 0
    for i in (1, 2):
        assert main(["calibrate", *common, "--shard", f"{i}/2", "--out", str(tmp_path / f"s{i}.npz")]) == 0
    assert main(["merge-stats", str(tmp_path / "s1.npz"), str(tmp_path / "s2.npz"),
                 "--out", str(tmp_path / "merged.npz")]) == 0
    assert_same_statistics(ExpertStats.load(tmp_path / "merged.npz"), ExpertStats.load(tmp_path / "whole.npz"))
    assert main(["calibrate", *common, "--shard", "3/2", "--out", str(tmp_path / "bad.npz")]) == 2
    assert main(["prune", "--model", str(tiny_dir), "--stats", str(tmp_path / "s1.npz"), "--ratio", "0.5",
                 "--out", str(tmp_path / "pruned")]) == 2


def test_torchrun_two_ranks_on_cpu_equal_one_process(tiny_dir, calib_file, tmp_path):
    """gloo on CPU: 2 ranks, each half of the samples, reduced into one file by rank 0."""
    out = tmp_path / "ranks.npz"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-port", "29517", "-m", "reap_core", "calibrate", "--model", str(tiny_dir),
                          "--calibration", str(calib_file), "--batch-size", "1", "--out", str(out)],
                         capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert "2 ranks reduced into one file" in run.stdout
    loaded = load_model(str(tiny_dir))
    calib = build_calibration(str(calib_file), loaded.tokenizer, max_tokens=512)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)          # as the ranks ran: float32 matmuls differ by ~1e-7 across thread counts
    try:
        single = observe(loaded, calib, batch_size=1)
    finally:
        torch.set_num_threads(threads)
    assert_same_statistics(ExpertStats.load(out), single)
