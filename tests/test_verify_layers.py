"""Export verification layer by layer from disk: passes a correct export of several families, catches
one corrupted expert row and names its layer, and the CLI offers it."""

from __future__ import annotations

import shutil

import pytest
from safetensors.torch import load_file, save_file

from reap_core.export import PROBE_PROMPTS, TOLERANCE, ExportError, export_pruned
from reap_core.model import load_model
from reap_core.observer import observe
from reap_core.plan import make_plan
from reap_core.shards import SINGLE_FILE
from reap_core.tiny import build_tiny_family, build_tiny_model
from reap_core.verify_layers import LayerMismatch, verify_layerwise


@pytest.mark.parametrize("kind", ["gemma4-multimodal", "qwen3_moe", "deepseek_v3", "gpt_oss"])
def test_layerwise_verification(kind, tokenizer, calib, tmp_path):
    model = (build_tiny_model(kind.split("-")[1], vocab_size=len(tokenizer)) if kind.startswith("gemma4")
             else build_tiny_family(kind, vocab_size=len(tokenizer)))
    source = tmp_path / "source"
    model.save_pretrained(source)
    tokenizer.save_pretrained(source)
    stats = observe(load_model(str(source)), calib, batch_size=4, top_tokens_per_expert=0)
    plan = make_plan(stats, 0.5)
    result = export_pruned(str(source), plan, stats, tmp_path / "out", streaming=True, verify="layerwise")
    v = result.verification
    assert v["method"] == "layer by layer" and len(v["layers"]) == model.config.get_text_config().num_hidden_layers
    assert result.max_abs_diff <= 1e-5 and max(v["layers"]) <= 1e-5

    # one exported expert's down projection corrupted in its second MoE layer: refused, that layer named
    corrupted = tmp_path / "corrupted"
    shutil.copytree(tmp_path / "out", corrupted)
    tensors = load_file(corrupted / SINGLE_FILE)
    layer = plan.layer_indices[1]
    key = next(k for k in sorted(tensors) if f"layers.{layer}." in k and "experts" in k and "down_proj" in k
               and not k.endswith("bias"))
    tensors[key] = tensors[key].clone()
    tensors[key][0].view(-1)[:16] += 1.0
    save_file(tensors, corrupted / SINGLE_FILE, metadata={"format": "pt"})
    with pytest.raises(LayerMismatch, match=f"decoder layer {layer} of the export differs"):
        verify_layerwise(str(source), corrupted, plan, PROBE_PROMPTS, TOLERANCE)


def test_layerwise_verification_needs_the_source_files(tiny, calib, tmp_path):
    stats = observe(tiny, calib, batch_size=4, top_tokens_per_expert=0)
    with pytest.raises(ExportError, match="reads the source's safetensors"):
        export_pruned(tiny, make_plan(stats, 0.5), stats, tmp_path / "out", streaming=False, verify="layerwise")


def test_cli_verify_layerwise(tiny_dir, calib_file, tmp_path, capsys):
    from reap_core.cli import main

    stats = tmp_path / "stats.npz"
    assert main(["calibrate", "--model", str(tiny_dir), "--calibration", str(calib_file), "--out", str(stats)]) == 0
    assert main(["export", "--model", str(tiny_dir), "--stats", str(stats), "--ratio", "0.5", "--verify-layerwise",
                 "--out", str(tmp_path / "export")]) == 0
    out = capsys.readouterr().out
    assert "layer by layer from disk" in out and "to verify the export" not in out
