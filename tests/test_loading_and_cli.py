"""Loading from local folders, refusing what cannot be pruned, config-only sizing, and the CLI."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import GEMMA4_26B_CONFIG_DIR, ROOT
from reap_core.adapters import find_adapter
from reap_core.errors import ModelLoadError, UnsupportedModel
from reap_core.model import load_config, load_model
from reap_core.sizing import count_params, sizes_for_ratio


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "reap_core", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
                                                           "HOME": str(ROOT)})


def test_load_local_folder(tiny_dir):
    loaded = load_model(str(tiny_dir))
    assert loaded.num_experts == 16 and loaded.top_k == 4 and loaded.dtype == torch.float32
    assert loaded.moe_layer_indices == [0, 1, 2] and loaded.device == "cpu"


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="no such folder"):
        load_model(str(tmp_path / "does" / "not" / "exist"))
    with pytest.raises(ModelLoadError, match="not a readable model"):
        load_model(str(tmp_path))              # a folder without config.json


def test_non_moe_models_are_refused_before_loading_weights(tmp_path):
    from transformers import Gemma4TextConfig, LlamaConfig
    from reap_core.tiny import tiny_text_config

    dense = tiny_text_config()
    dense.update(enable_moe_block=False, num_experts=None, top_k_experts=None)
    Gemma4TextConfig(**dense).save_pretrained(tmp_path / "dense-gemma4")
    with pytest.raises(UnsupportedModel, match="without a Mixture-of-Experts block"):
        load_model(str(tmp_path / "dense-gemma4"))
    LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                vocab_size=100).save_pretrained(tmp_path / "llama")
    with pytest.raises(UnsupportedModel, match="model_type 'llama'.*not a supported Mixture-of-Experts family"):
        load_model(str(tmp_path / "llama"))


def test_sizes_from_config_alone_match_published_gemma4_prunes():
    config = load_config(str(GEMMA4_26B_CONFIG_DIR))
    counts = count_params(config, find_adapter(config))
    orig, p20 = sizes_for_ratio(counts, 0.20)
    _, p30 = sizes_for_ratio(counts, 0.30)
    assert (orig.experts_per_layer, p20.experts_per_layer, p30.experts_per_layer) == (128, 103, 90)
    assert abs(orig.total_params / 1e9 - 25.8) < 0.05
    assert abs(p20.total_params / 1e9 - 21.34) < 0.01 and abs(p30.total_params / 1e9 - 19.02) < 0.01
    assert 3.7e9 < orig.active_params < 4.0e9       # the "A4B"
    assert abs(p20.bytes / 1e9 - 42.7) < 0.2 and orig.bytes == orig.total_params * 2


def test_cli_info_and_plan_on_a_config_only_folder():
    out = run_cli("plan", "--model", GEMMA4_26B_CONFIG_DIR, "--ratio", "0.3")
    assert out.returncode == 0, out.stderr
    assert "19.02B" in out.stdout and "90" in out.stdout
    out = run_cli("info", "--model", GEMMA4_26B_CONFIG_DIR)
    assert out.returncode == 0 and "25.81B" in out.stdout


def test_cli_calibrate_then_prune(tiny_dir, calib_file, tmp_path):
    stats = tmp_path / "stats.npz"
    out = run_cli("calibrate", "--model", tiny_dir, "--calibration", calib_file, "--out", stats,
                  "--max-tokens", "64", "--batch-size", "2")
    assert out.returncode == 0, out.stderr
    assert stats.exists() and "statistics written" in out.stdout
    pruned = tmp_path / "pruned"
    out = run_cli("prune", "--model", tiny_dir, "--stats", stats, "--ratio", "0.25", "--criterion", "frequency",
                  "--out", pruned)
    assert out.returncode == 0, out.stderr
    config = json.loads((pruned / "config.json").read_text())
    assert config["num_experts"] == 12
    doc = json.loads((pruned / "reap_scores.json").read_text())
    assert doc["criterion"] == "frequency" and len(doc["layers"][0]["kept"]) == 12


@pytest.mark.parametrize("args,message", [
    (["info", "--model", "/no/such/model"], "no such folder"),
    (["plan", "--model", "{fixture}", "--ratio", "1.0"], "between 0 and 1"),
    (["plan", "--model", "{fixture}", "--ratio", "0.95"], "fewer than the 8"),
    (["calibrate", "--model", "{tiny}", "--calibration", "/no/file.jsonl", "--out", "/tmp/x.npz"], "not found"),
    (["prune", "--model", "{tiny}", "--stats", "/no/stats.npz", "--ratio", "0.5", "--out", "/tmp/o"], "not found"),
])
def test_cli_errors_are_one_clear_line(args, message, tiny_dir):
    args = [a.replace("{fixture}", str(GEMMA4_26B_CONFIG_DIR)).replace("{tiny}", str(tiny_dir)) for a in args]
    out = run_cli(*args)
    assert out.returncode == 2
    lines = [line for line in out.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], out.stderr
    assert "Traceback" not in out.stderr


def test_cli_eval_on_the_bundled_model(tmp_path):
    stats = tmp_path / "toy.npz"
    out = run_cli("calibrate", "--calibration", "builtin:toy-math,toy-code", "--samples-per-category", "4",
                  "--out", stats)
    assert out.returncode == 0, out.stderr
    report = tmp_path / "eval.json"
    out = run_cli("eval", "--stats", stats, "--ratio", "0.5", "--items-per-domain", "2", "--fidelity",
                  "--sweep-ratios", "0,0.5", "--sweep-criteria", "reap,random", "--json", report)
    assert out.returncode == 0, out.stderr
    assert "| math |" in out.stdout and "Random (seeded)" in out.stdout
    doc = json.loads(report.read_text())
    assert set(doc) == {"tasks", "fidelity"}
    kl = [p["kl"] for p in doc["fidelity"]["points"]]
    assert all(np.isfinite(kl)) and min(kl) == 0.0      # ratio 0 is the original itself
