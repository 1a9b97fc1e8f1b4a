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


def test_cli_info_and_plan_on_a_config_only_folder(capsys):
    from reap_core.cli import main

    assert main(["plan", "--model", str(GEMMA4_26B_CONFIG_DIR), "--ratio", "0.3"]) == 0
    out = capsys.readouterr().out
    assert "19.02B" in out and "90" in out
    assert main(["info", "--model", str(GEMMA4_26B_CONFIG_DIR)]) == 0
    assert "25.81B" in capsys.readouterr().out


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


def test_cli_merge_and_eval_merge(tiny_dir, calib_file, tmp_path, capsys):
    """merge writes a verified folder recording its clusters; eval --merge needs a ratio; a bad method is
    refused before the model is read (the sweep with merges: tests/test_merging.py)."""
    from reap_core.cli import main

    def run(*args):
        status = main([str(a) for a in args])
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    stats = tmp_path / "stats.npz"
    assert run("calibrate", "--model", tiny_dir, "--calibration", calib_file, "--out", stats,
                    "--max-tokens", "64")[0] == 0
    status, out, err = run("merge", "--model", tiny_dir, "--stats", stats, "--method", "hc-smoe",
                                "--ratio", "0.5", "--out", tmp_path / "merged")
    assert status == 0, err
    assert "merged into 8 per layer" in out and "merged model in memory" in out
    recipe = json.loads((tmp_path / "merged" / "reap_recipe.json").read_text())
    assert recipe["merge"]["method"] == "hc-smoe" and json.loads(
        (tmp_path / "merged" / "config.json").read_text())["num_experts"] == 8
    status, out, err = run("eval", "--model", tiny_dir, "--stats", stats, "--merge", "ream")
    assert status == 2 and "--merge evaluates the model merged at --ratio" in err
    status, out, err = run("merge", "--model", tiny_dir, "--stats", stats, "--method", "avg",
                                "--ratio", "0.5")
    assert status == 2 and "unknown merge method 'avg'" in err


def test_cli_info_columns_align(capsys, monkeypatch):
    from transformers import PretrainedConfig

    from reap_core.cli import main

    # reading config.torch_dtype is what printed transformers' deprecation warning: it must not happen
    monkeypatch.setattr(PretrainedConfig, "torch_dtype", property(lambda self: pytest.fail("config.torch_dtype read")))
    assert main(["info", "--model", str(GEMMA4_26B_CONFIG_DIR)]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    import re
    columns = {re.match(r"^\S.*?\s{2,}(?=\S)", line).end() for line in lines}
    assert len(lines) >= 9 and len(columns) == 1, lines   # every value starts in the same column
    assert lines[0].split()[-1] == str(GEMMA4_26B_CONFIG_DIR) and "25.81B" in captured.out


def test_cli_default_outputs_land_in_ignored_folders(tiny_dir, calib_file, tmp_path, monkeypatch, capsys):
    """Without --out, files go under outputs/ (git-ignored), prune/export names never replace an earlier
    one, and progress piped to a file is a few whole lines."""
    monkeypatch.chdir(tmp_path)
    status, errors, err = run_main(capsys, "calibrate", "--model", tiny_dir, "--calibration", calib_file,
                                   "--max-tokens", "64", "--batch-size", "1")
    assert status == 0, err
    stats = tmp_path / "outputs" / f"{tiny_dir.name}-stats.npz"
    assert stats.is_file()
    assert "\r" not in err and len([line for line in err.splitlines() if line.startswith("calibration:")]) <= 12, err
    for expected in ("reap-25", "reap-25-2"):
        status, errors, err = run_main(capsys, "prune", "--model", tiny_dir, "--stats", stats, "--ratio", "0.25")
        assert status == 0, err
        assert (tmp_path / "outputs" / f"{tiny_dir.name}-{expected}" / "config.json").is_file()
    ignored = (ROOT / ".gitignore").read_text().split()
    assert "/outputs/" in ignored and "/exports/" in ignored


@pytest.mark.parametrize("args,message", [
    (["info", "--model", "/no/such/model"], "no such folder"),
    (["plan", "--model", "{fixture}", "--ratio", "1.0"], "between 0 and 1"),
    (["plan", "--model", "{fixture}", "--ratio", "0.95"], "fewer than the 8"),
    (["calibrate", "--model", "{tiny}", "--calibration", "/no/file.jsonl", "--out", "/tmp/x.npz"], "not found"),
    (["prune", "--model", "{tiny}", "--stats", "/no/stats.npz", "--ratio", "0.5", "--out", "/tmp/o"], "not found"),
])
def test_cli_errors_are_one_clear_line(args, message, tiny_dir, capsys):
    """In-process (main() as `python -m reap_core` runs it; a subprocess per case costs ~8 s of imports):
    a traceback would escape main() and fail the test."""
    args = [a.replace("{fixture}", str(GEMMA4_26B_CONFIG_DIR)).replace("{tiny}", str(tiny_dir)) for a in args]
    status, errors, err = run_main(capsys, *args)
    assert status == 2
    assert len(errors) == 1 and message in errors[0], err
    assert "Traceback" not in err


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


# --- issue 9: nothing a user can cause is a traceback, nor costs the work before it ---------------------

def synthetic_stats(path, top_k=4, layers=(0, 1, 2), experts=16):
    """A statistics file for the tiny model (3 MoE layers x 16 experts, top-4) without calibrating."""
    from reap_core.stats import ExpertStats

    rng = np.random.default_rng(0)
    shape = (1, len(layers), experts)
    arrays = {name: rng.uniform(1.0, 5.0, size=shape) for name in
              ("count", "gate_sum", "norm_sum", "gated_norm_sum", "norm_max", "act_max")}
    return ExpertStats(model_id="tiny", layer_indices=list(layers), num_experts=experts, top_k=top_k,
                       categories=["all"], arrays=arrays, tokens_per_category=[100]).save(path)


def run_main(capsys, *args):
    """main() in-process (a subprocess spends ~8 s importing torch): (exit status, 'error:' lines, stderr)."""
    from reap_core.cli import main

    status = main([str(a) for a in args])
    err = capsys.readouterr().err
    return status, [line for line in err.splitlines() if line.startswith("error:")], err


@pytest.fixture
def no_model_loading(monkeypatch):
    """Any attempt to load a model (weights or config) fails the test."""
    import reap_core.model as model

    monkeypatch.setattr(model, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    monkeypatch.setattr(model, "load_config", lambda *a, **k: pytest.fail("a config was read"))


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "a-file"
    path.write_text("not a folder")
    return path


@pytest.mark.parametrize("command,target,message", [
    ("calibrate", "{file}/sub/stats.npz", "--out '{file}/sub/stats.npz' cannot be written: '{file}' is not a folder"),
    ("calibrate", "/dev/null/x.npz", "--out '/dev/null/x.npz' cannot be written: '/dev/null' is not a folder"),
    ("calibrate", "{tmp}/folder.npz", "--out '{tmp}/folder.npz' is a folder: give a file name"),
    ("calibrate", "{readonly}/stats.npz", "--out '{readonly}/stats.npz' cannot be written: Permission denied"),
    ("prune", "{file}", "exists and is not a folder"),
    ("prune", "/dev/null/x", "--out cannot write '/dev/null/x': '/dev/null' is not a folder"),
    ("export", "{file}", "exists and is not a folder"),
    ("export", "{file}/sub/out", "--out cannot write '{file}/sub/out': '{file}' is not a folder"),
    ("eval", "/dev/null/x.json", "--json '/dev/null/x.json' cannot be written: '/dev/null' is not a folder"),
    ("eval", "{tmp}", "--json '{tmp}' is a folder: give a file name"),
])
def test_cli_unwritable_outputs_fail_before_any_model_is_loaded(command, target, message, tmp_path, a_file,
                                                                 capsys, no_model_loading):
    import os

    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)
    if "{readonly}" in target and os.access(readonly, os.W_OK):
        pytest.skip("running as root: a read-only folder is writable anyway")
    (tmp_path / "folder.npz").mkdir()

    def fill(text):
        return text.replace("{file}", str(a_file)).replace("{tmp}", str(tmp_path)).replace("{readonly}", str(readonly))

    stats = synthetic_stats(tmp_path / "stats.npz")
    args = {"calibrate": ["calibrate", "--out", fill(target)],
            "prune": ["prune", "--stats", stats, "--ratio", "0.5", "--out", fill(target)],
            "export": ["export", "--stats", stats, "--ratio", "0.5", "--out", fill(target)],
            "eval": ["eval", "--stats", stats, "--ratio", "0.5", "--json", fill(target)]}[command]
    status, errors, err = run_main(capsys, *args)
    assert status == 2 and len(errors) == 1 and fill(message) in errors[0], err
    assert not (a_file.parent / "a-file" / "sub").exists() and a_file.read_text() == "not a folder"


def test_cli_calibrate_checks_its_output_before_calibrating(tiny_dir, calib_file, capsys, monkeypatch):
    """The realistic case: the model exists, the output cannot be written — no calibration is started."""
    import reap_core.observer as observer

    monkeypatch.setattr(observer, "observe", lambda *a, **k: pytest.fail("calibration ran"))
    status, errors, err = run_main(capsys, "calibrate", "--model", tiny_dir, "--calibration", calib_file,
                                   "--out", "/dev/null/stats.npz")
    assert status == 2 and errors == ["error: --out '/dev/null/stats.npz' cannot be written: '/dev/null' is not "
                                      "a folder"], err


@pytest.mark.parametrize("ratios,message", [
    ("0.5,abc", "error: --sweep-ratios: 'abc' is not a number (give ratios like 0,0.25,0.5)"),
    ("0.5,", "error: --sweep-ratios: '' is not a number (give ratios like 0,0.25,0.5)"),
    ("0.5,1.5", "error: --sweep-ratios: 1.5 is outside [0, 1) (0 = the original model)"),
    ("0,nan", "error: --sweep-ratios: nan is outside [0, 1) (0 = the original model)"),
    ("0,0.9", "error: --sweep-ratios: 0.9 keeps fewer than the 4 experts the router picks; usable up to 0.750"),
])
def test_cli_sweep_ratios_are_checked_before_loading(ratios, message, tmp_path, capsys, no_model_loading):
    stats = synthetic_stats(tmp_path / "stats.npz")
    status, errors, err = run_main(capsys, "eval", "--stats", stats, "--fidelity", "--sweep-ratios", ratios)
    assert status == 2 and errors == [message], err


def test_cli_unknown_sweep_criterion_is_checked_before_loading(tmp_path, capsys, no_model_loading):
    stats = synthetic_stats(tmp_path / "stats.npz")
    status, errors, err = run_main(capsys, "eval", "--stats", stats, "--fidelity", "--sweep-criteria", "reap,best")
    assert status == 2 and len(errors) == 1 and errors[0].startswith("error: unknown criterion 'best'"), err


@pytest.mark.parametrize("command", ["prune", "export", "eval"])
def test_cli_truncated_stats_file_is_one_error_line(command, tmp_path, capsys, no_model_loading):
    good = synthetic_stats(tmp_path / "stats.npz").read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good[: len(good) // 2])
    extra = ["--out", tmp_path / "out"] if command != "eval" else []
    status, errors, err = run_main(capsys, command, "--stats", cut, "--ratio", "0.5", *extra)
    assert status == 2 and len(errors) == 1, err
    assert errors[0].startswith("error: cut.npz: not a REAP Studio statistics file, or a damaged one"), err


@pytest.mark.parametrize("command", ["prune", "export"])
def test_cli_stats_claiming_another_top_k_are_refused_before_the_weights(command, tiny_dir, tmp_path, capsys,
                                                                          monkeypatch):
    """Header top_k=2, model top-4: ratio 0.85 keeps 3 experts, which the header allows and the model cannot."""
    import reap_core.model as model

    monkeypatch.setattr(model, "load_model", lambda *a, **k: pytest.fail("the weights were loaded"))
    stats = synthetic_stats(tmp_path / "k2.npz", top_k=2)
    status, errors, err = run_main(capsys, command, "--model", tiny_dir, "--stats", stats, "--ratio", "0.85",
                                   "--out", tmp_path / "out")
    assert status == 2 and len(errors) == 1, err
    assert "top_k=2" in errors[0] and "routes each token to 4" in errors[0], err
    assert not (tmp_path / "out").exists()


def test_cli_stats_of_other_layers_are_refused(tiny_dir, tmp_path, capsys):
    stats = synthetic_stats(tmp_path / "l.npz", layers=(0, 1, 5))
    status, errors, err = run_main(capsys, "eval", "--model", tiny_dir, "--stats", stats, "--ratio", "0.5")
    assert status == 2 and len(errors) == 1, err
    assert "MoE layers [0, 1, 5] (3)" in errors[0] and "are [0, 1, 2] (3)" in errors[0], err


def test_cli_ratio_out_of_range_is_an_error(tmp_path, capsys, no_model_loading):
    stats = synthetic_stats(tmp_path / "stats.npz")
    status, errors, err = run_main(capsys, "prune", "--stats", stats, "--ratio", "1.5", "--out", tmp_path / "o")
    assert status == 2 and errors == ["error: compression ratio must be between 0 and 1 (exclusive), got 1.5"], err


@pytest.mark.parametrize("args,message", [
    (["calibrate", "--out", "x.npz", "--batch-size", "0"], "argument --batch-size: must be at least 1, not 0"),
    (["calibrate", "--out", "x.npz", "--max-tokens", "-5"], "argument --max-tokens: must be at least 1, not -5"),
    (["eval", "--items-per-domain", "many"], "argument --items-per-domain: 'many' is not a whole number"),
    (["export", "--stats", "s", "--ratio", "0.5", "--out", "o", "--max-shard-gb", "0"],
     "argument --max-shard-gb: must be a positive number, not 0"),
])
def test_cli_bad_numbers_are_usage_errors(args, message, capsys, no_model_loading):
    from reap_core.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


# --- dense models are refused from the config, before any weight is read --------------------------------

def dense_gemma4(folder, kind):
    """A dense Gemma 4 whose config still carries expert counts (enable_moe_block=False, num_experts=16):
    transformers builds it without experts. Its weights file is garbage: reading it would fail."""
    from transformers import Gemma4Config, Gemma4TextConfig
    from reap_core.tiny import tiny_text_config

    text = {**tiny_text_config(), "enable_moe_block": False}      # num_experts=16, top_k_experts=4 kept
    config = Gemma4TextConfig(**text) if kind == "text" else Gemma4Config(text_config=text, vision_config=None)
    config.save_pretrained(folder)
    assert json.loads((folder / "config.json").read_text()).get("num_experts", 16) == 16
    (folder / "model.safetensors").write_bytes(b"\x00garbage, not a safetensors file" * 10)
    return folder


@pytest.mark.parametrize("kind", ["text", "multimodal"])
def test_dense_gemma4_is_refused_before_its_weights_are_read(kind, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    folder = dense_gemma4(tmp_path / "dense", kind)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained",
                        classmethod(lambda *a, **k: pytest.fail("weights were read")))
    with pytest.raises(UnsupportedModel) as err:
        load_model(str(folder))
    assert str(err.value) == ("gemma4 model without a Mixture-of-Experts block (enable_moe_block=False): "
                              "a dense model has no experts to prune")


def test_cli_info_and_plan_refuse_a_dense_model(tmp_path, capsys):
    config = json.loads((GEMMA4_26B_CONFIG_DIR / "config.json").read_text())
    config["text_config"]["enable_moe_block"] = False                 # experts counts left in place
    (tmp_path / "config.json").write_text(json.dumps(config))
    expected = ["error: gemma4 model without a Mixture-of-Experts block (enable_moe_block=False): "
                "a dense model has no experts to prune"]
    for args in (["info"], ["plan", "--ratio", "0.3"]):
        status, errors, err = run_main(capsys, *args, "--model", tmp_path)
        assert status == 2 and errors == expected, err
    assert "experts / layer" not in capsys.readouterr().out


# --- public mode: no server paths, Hub ids never read from disk, only the visitor's token -------------------

SERVER_PATHS_MESSAGE = ("server paths are not accepted here: choose the bundled model or type a Hub model id "
                        "(org/name)")
OWNER_TOKEN = "hf_OwnerTokenOfTheServer0123456789"


@pytest.mark.parametrize("text", ["{existing}", "{missing}", "/etc/passwd", "/no/such/dir", "./assets", "../x",
                                  ".", "~", "~/models", "assets/toy-gemma4-moe/extra", "a\\b", "C:\\models\\x"])
@pytest.mark.parametrize("function", ["resolve_model_path", "load_config", "load_model"])
def test_public_mode_refuses_server_paths_with_one_message(text, function, tmp_path, no_hub):
    import reap_core.model as model

    text = text.replace("{existing}", str(tmp_path)).replace("{missing}", str(tmp_path / "missing"))
    with pytest.raises(ModelLoadError) as err:
        getattr(model, function)(text, allow_local_paths=False)
    assert str(err.value) == SERVER_PATHS_MESSAGE     # the same whether the path exists or not: no probing


@pytest.fixture
def no_hub(monkeypatch):
    """Any request to the Hub fails the test."""
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", lambda *a, **k: pytest.fail("the Hub was asked"))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("the Hub was asked"))


def test_public_mode_accepts_the_bundled_model_and_refuses_invalid_ids(no_hub):
    from reap_core.model import resolve_model_path

    assert load_config("toy-gemma4-moe", allow_local_paths=False).model_type == "gemma4"
    assert resolve_model_path("google/gemma-4-26b-a4b-it", allow_local_paths=False) == "google/gemma-4-26b-a4b-it"
    assert resolve_model_path("assets/toy-gemma4-moe", allow_local_paths=False) == "assets/toy-gemma4-moe"
    for bad in ("bad id!", "org/na--me", "x" * 97):
        with pytest.raises(ModelLoadError, match=r"is not a valid Hub model id: use org/name"):
            resolve_model_path(bad, allow_local_paths=False)


@pytest.fixture
def hub_models(tmp_path, monkeypatch, tiny_dir):
    """A fake Hub on 127.0.0.1 holding the tiny model publicly (tester/tiny) and privately for the server's
    owner (owner/secret), whose token is also in HF_TOKEN; an empty Hub cache in tmp_path."""
    from huggingface_hub import constants

    from fake_hub import FakeHub

    files = {p.name: p.read_bytes() for p in tiny_dir.iterdir() if p.is_file()}
    with FakeHub(token=OWNER_TOKEN, user="owner") as hub:
        hub.add_model("tester/tiny", files)
        hub.add_model("owner/secret", files, private=True)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", hub.endpoint)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
        monkeypatch.setenv("HF_TOKEN", OWNER_TOKEN)
        yield hub


def test_token_false_sends_no_token_not_even_hf_token(hub_models):
    with pytest.raises(ModelLoadError, match=r"^no model 'owner/secret' on the Hub \(or it is private"):
        load_config("owner/secret", token=False)
    assert load_config("tester/tiny", token=False).num_experts == 16
    assert hub_models.requests and set(hub_models.authorizations) == {None}
    # the default (token=None, local mode) does use HF_TOKEN: the fake Hub sees it, so the check above can fail
    assert load_config("owner/secret").num_experts == 16
    assert f"Bearer {OWNER_TOKEN}" in hub_models.authorizations


def test_public_mode_loads_hub_models_with_the_visitors_token_only(hub_models):
    loaded = load_model("tester/tiny", token=False, allow_local_paths=False)
    assert loaded.num_experts == 16 and loaded.moe_layer_indices == [0, 1, 2] and loaded.model_id == "tester/tiny"
    assert set(hub_models.authorizations) == {None}
    load_config("owner/secret")           # the owner reads their private model: now it is in the server's cache
    hub_models.authorizations.clear()
    for function in (load_config, load_model):   # a visitor without a token still cannot read it
        with pytest.raises(ModelLoadError, match=r"^no model 'owner/secret' on the Hub"):
            function("owner/secret", token=False, allow_local_paths=False)
    assert set(hub_models.authorizations) == {None}


def test_public_mode_never_reads_a_hub_id_as_a_local_folder(hub_models, tmp_path, monkeypatch):
    from transformers import LlamaConfig

    monkeypatch.chdir(tmp_path)
    LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                vocab_size=100).save_pretrained(tmp_path / "tester" / "tiny")     # ./tester/tiny: a local folder
    assert load_config("tester/tiny").model_type == "llama"          # local mode reads the folder (the control)
    config = load_config("tester/tiny", token=False, allow_local_paths=False)
    assert config.model_type == "gemma4_text" and config.num_experts == 16    # public mode: the Hub's model
    monkeypatch.chdir(ROOT)                                          # ./assets/toy-gemma4-moe exists here
    hub_models.requests.clear()
    with pytest.raises(ModelLoadError, match=r"^no model 'assets/toy-gemma4-moe' on the Hub"):
        load_model("assets/toy-gemma4-moe", token=False, allow_local_paths=False)
    assert "GET /api/models/assets/toy-gemma4-moe" in hub_models.requests
