"""The model picker's suggestions (every family's flagships, sized from config alone), the model card
rows of other families, and the chat's Thinking switch per family. In process, no app server: the
app's own picker and a tiny Qwen3-MoE / GLM-4.5 driven through it are in test_app_api.py."""

from __future__ import annotations

import json
import re

import pytest

from conftest import ROOT
from reap_core.adapters import ADAPTERS, find_adapter
from reap_core.model import BUNDLED_MODEL, load_config, wrap_model
from reap_core.sizing import checkpoint_format, count_params, size_at
from reap_core.studio import (FLAGSHIPS_FILE, ModelCache, flagships, hardware_for, measured_flagships, model_card,
                              thinking_switch)
from reap_core.tiny import build_tiny_family, char_tokenizer

SOURCES = ROOT / "tests" / "fixtures" / "configs" / "SOURCES.md"

# a Qwen3-style ChatML template that reads enable_thinking as Qwen3's own does (an empty think block when off)
CHATML_SPECIALS = {"im_start": "<|im_start|>", "im_end": "<|im_end|>", "think": "<think>", "think_end": "</think>"}
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}")


def chatml_tokenizer():
    tok = char_tokenizer(extra_special_tokens=CHATML_SPECIALS)
    tok.chat_template = CHATML_TEMPLATE
    return tok


def test_flagship_sizes_are_count_params_of_the_fixture_configs():
    """assets/flagships.json against a fresh count, and its Hub ids against SOURCES.md's table."""
    table = json.loads(FLAGSHIPS_FILE.read_text())["models"]
    sources = dict(re.findall(r"^\| ([\w.\-]+) \| ([\w.\-]+/[\w.\-]+) \|", SOURCES.read_text(), flags=re.M))
    assert len(sources) == 11
    for hub_id, row in table.items():
        folder = ROOT / row["fixture"]
        if folder.parent.name == "configs":
            assert sources[folder.name] == hub_id, (folder.name, hub_id)
        config = load_config(str(folder))
        adapter = find_adapter(config)
        counts = count_params(config, adapter)
        full = size_at(counts, counts.num_experts)
        assert row == {"family": adapter.layout.family, "total_params": full.total_params,
                       "active_params": full.active_params, "experts": counts.num_experts, "top_k": counts.top_k,
                       "layers": adapter.num_layers(config), "largest_layer_params": counts.largest_layer,
                       "hidden_size": adapter.text_config(config).hidden_size,
                       "routed_expert_params": counts.moe_layers * counts.num_experts * counts.expert_mlp_params,
                       "experts_converted_at_load": bool(adapter.layout.checkpoint_expert_lists),
                       "checkpoint_format": checkpoint_format(config),
                       "checkpoint_bytes": size_at(counts, counts.num_experts, checkpoint_format(config)).bytes,
                       "fixture": row["fixture"]}, hub_id
        assert hub_id in adapter.layout.flagships, f"{hub_id} is not a flagship of {adapter.layout.family}"
    assert set(sources.values()) | {"google/gemma-4-26b-a4b-it"} == set(table)


def test_largest_layer_counted_from_parameter_names():
    """The largest decoder layer (what layer-by-layer work holds), counted another way: parameters grouped
    by their `layers.N.` name, on the meta device."""
    import torch
    from transformers import AutoModelForCausalLM

    table = json.loads(FLAGSHIPS_FILE.read_text())["models"]
    for hub_id in ("google/gemma-4-26b-a4b-it", "Qwen/Qwen3-Coder-480B-A35B-Instruct"):
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(load_config(str(ROOT / table[hub_id]["fixture"])))
        per_layer: dict[str, int] = {}
        for name, param in model.named_parameters():
            found = re.search(r"language_model\.layers\.(\d+)\.|^model\.layers\.(\d+)\.", name)
            if found:
                per_layer[found.group(0)] = per_layer.get(found.group(0), 0) + param.numel()
        assert table[hub_id]["largest_layer_params"] == max(per_layer.values()), hub_id
        assert table[hub_id]["layers"] == len(per_layer)


def test_space_hardware_table_in_the_readme_is_current():
    """README's Space table is scripts/space_hardware.py's output; two rows checked by hand: Gemma 4 (52 GB
    bf16 fits a 70 GB ZeroGPU call with 15% to spare; 131,072 tokens x 2816 x 2 B = 0.74 GB of hidden states)
    and Qwen3-Coder-480B (960 GB: layer by layer, 62 layers + the recording pass = 63 calls)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "space_hardware.py"), "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    readme = (ROOT / "README.md").read_text()
    gemma = next(line for line in readme.splitlines() if line.startswith("| google/gemma-4-26b-a4b-it | BF16"))
    assert "| 0.7 GB | one pass (large) |" in gemma
    qwen = next(line for line in readme.splitlines() if line.startswith("| Qwen/Qwen3-Coder-480B-A35B-Instruct | BF16"))
    assert "| layer by layer, 63 calls |" in qwen and "| 15.4 GB |" in qwen


def test_every_family_with_flagships_is_suggested_with_its_size():
    suggested = flagships()
    by_id = {f.hub_id: f for f in suggested}
    assert len(by_id) == len(suggested)
    families = {name for name, a in ADAPTERS.items() if a.layout.flagships}
    assert families == {f.family for f in suggested} and len(families) >= 12
    assert suggested[0].hub_id == "google/gemma-4-26b-a4b-it"          # Gemma 4 first, as registered
    measured = measured_flagships()
    for f in suggested:
        label = f.label()
        assert label.startswith(f.hub_id.rpartition("/")[2] + " — " + f.family)
        if f.hub_id in measured:
            assert f.total_params == measured[f.hub_id]["total_params"]
            assert f"{f.total_params / 1e9:.1f}B params ({f.active_params / 1e9:.1f}B active)" in label
        else:
            assert f.total_params is None and "size not measured" in label and "params" not in label
    coder = by_id["Qwen/Qwen3-Coder-480B-A35B-Instruct"].label()
    assert coder == ("Qwen3-Coder-480B-A35B-Instruct — qwen3_moe, 480.2B params (35.5B active), "
                     "needs a GPU cluster and the Hub")
    assert "needs a GPU and the Hub" in by_id["google/gemma-4-26b-a4b-it"].label()


def test_hardware_and_a_missing_sizes_file(tmp_path):
    assert hardware_for(26 * 10**9) == "a GPU" and hardware_for(107 * 10**9) == "several GPUs"
    assert hardware_for(480 * 10**9) == "a GPU cluster"
    listed = flagships(tmp_path / "absent.json")          # no file: every flagship still listed, unsized
    assert len(listed) == len(flagships()) and all(f.total_params is None for f in listed)


@pytest.fixture(scope="module")
def tiny_families():
    tok = char_tokenizer()
    return {t: wrap_model(build_tiny_family(t, vocab_size=len(tok)), tok, model_id=f"tiny-{t}")
            for t in ("qwen3_moe", "glm4_moe", "deepseek_v3", "olmoe", "qwen2_moe")}


def card_rows(loaded) -> dict[str, str]:
    return dict(model_card(loaded, *ModelCache().counts(loaded)).rows)


def test_card_says_family_gate_shared_experts_and_groups(tiny_families):
    qwen = card_rows(tiny_families["qwen3_moe"])
    assert "(qwen3_moe)" in qwen["Architecture"] and qwen["Layers"] == "3 (2 with MoE)"
    assert qwen["Gate (what REAP weighs)"] == ADAPTERS["qwen3_moe"].layout.gate_definition
    assert "Shared experts" not in qwen and "Expert groups" not in qwen
    glm = card_rows(tiny_families["glm4_moe"])
    assert "sigmoid" in glm["Gate (what REAP weighs)"]
    assert glm["Shared experts"] == "always on, never pruned (`mlp.shared_experts`)"
    assert "Expert groups" not in glm                                 # n_group = 1
    qwen2 = card_rows(tiny_families["qwen2_moe"])
    assert "`mlp.shared_expert`" in qwen2["Shared experts"]
    deepseek = card_rows(tiny_families["deepseek_v3"])
    assert deepseek["Expert groups"].startswith("4 (group-limited routing: each token picks its experts from 2 groups)")


def test_thinking_switch_per_family(tiny_families):
    # the char tokenizer's template has no thinking switch: Qwen3's markup is named, the box stays off
    plain = thinking_switch(tiny_families["qwen3_moe"])
    assert not plain.enabled and plain.label == "Thinking (qwen3_moe)"
    assert "no thinking switch" in plain.info and "<think> … </think>" in plain.info
    olmoe = thinking_switch(tiny_families["olmoe"])
    assert not olmoe.enabled and "olmoe models have no reasoning block" in olmoe.info
    # a template that reads enable_thinking: on, with the family's markers
    tok = chatml_tokenizer()
    qwen = wrap_model(build_tiny_family("qwen3_moe", vocab_size=len(tok)), tok, model_id="tiny-qwen3-chatml")
    on = thinking_switch(qwen)
    assert on.enabled and "<think> … </think>" in on.info and "Gemma" not in on.info
    # the bundled model (trained to think) follows its template like any other
    bundled = wrap_model(tiny_families["qwen3_moe"].model, tok, model_id=BUNDLED_MODEL)
    assert thinking_switch(bundled).enabled


def test_cli_models_lists_every_flagship(capsys):
    from reap_core.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[2].startswith(BUNDLED_MODEL)
    for f in flagships():
        assert any(line.startswith(f.hub_id + " ") for line in lines), f.hub_id
    assert re.search(r"^Qwen/Qwen3-Coder-480B-A35B-Instruct +qwen3_moe +480\.15B +35\.47B +a GPU cluster", out, re.M)


def test_cli_info_names_gate_shared_experts_and_groups(capsys):
    from reap_core.cli import main

    assert main(["info", "--model", str(ROOT / "tests" / "fixtures" / "configs" / "deepseek-v3")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^gate +sigmoid score", out, re.M)
    assert re.search(r"^shared experts +always on, never pruned \(mlp\.shared_experts\)", out, re.M)
    assert re.search(r"^expert groups +8 ", out, re.M)
