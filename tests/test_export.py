"""Export (plan -> write -> verify; streaming == in memory, reloadable, equal to the masked view,
atomic), the model card, the heatmap PNG, and the push of a real export to a fake Hub on 127.0.0.1
(no real network; the push's errors are in test_hub.py)."""

import io
import json
import re

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard, split_torch_state_dict_into_shards
from PIL import Image
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from reap_core import shards
from reap_core.card import HEATMAP_FILE, RECIPE_FILE, STATS_FILE, eval_table
from reap_core.errors import StatisticsError
from reap_core.export import ExportError, export_pruned, plan_export, verify_export
from reap_core.heatmap_png import heatmap_png, heatmap_rgb, png_bytes
from reap_core.hub import push_folder
from reap_core.masking import masked_view
from reap_core.model import load_model
from reap_core.observer import observe
from reap_core.plan import make_plan
from reap_core.prune import PLAN_FILE, SCORES_FILE
from reap_core.stats import ExpertStats
from reap_core.tiny import build_tiny_model

from fake_hub import FakeHub, allow_local_hub

SHARD = 300_000          # bytes: forces several shards in and out of the tiny checkpoints
BASE = "google/gemma-4-26b-a4b-it"
TOKEN = "hf_TestTokenThatMustNeverLeak123"


def _tensors(folder):
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(f, framework="pt") as h:
            out.update({k: h.get_tensor(k) for k in h.keys()})
    return out


@pytest.fixture(scope="module", params=["causal", "multimodal"])
def exported(request, tmp_path_factory, tokenizer, calib):
    """A multi-shard source checkpoint, its statistics and plan, and both exports of it."""
    root = tmp_path_factory.mktemp(f"export-{request.param}")
    src = root / "source"
    build_tiny_model(request.param, vocab_size=len(tokenizer)).save_pretrained(src, max_shard_size=SHARD)
    tokenizer.save_pretrained(src)
    (src / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny source\n")
    assert len(list(src.glob("*.safetensors"))) >= 3
    loaded = load_model(str(src))
    stats = observe(loaded, calib, batch_size=4)
    plan = make_plan(stats, 0.5, "reap")
    seen = []
    streamed = export_pruned(str(src), plan, stats, root / "streamed", loaded=loaded, max_shard_bytes=SHARD,
                             base_model=BASE, progress=lambda f, m: seen.append(f))
    in_memory = export_pruned(loaded, plan, stats, root / "in-memory", streaming=False, max_shard_bytes=SHARD,
                              base_model=BASE)
    return dict(kind=request.param, src=src, loaded=loaded, stats=stats, plan=plan, streamed=streamed,
                in_memory=in_memory, progress=seen)


def test_streaming_equals_in_memory_bit_for_bit(exported):
    s, m = exported["streamed"], exported["in_memory"]
    assert s.streaming and not m.streaming
    weights = [f for f in s.files if f.endswith(".safetensors")]
    assert len(weights) >= 3 and "model.safetensors.index.json" in s.files
    for name in weights + ["model.safetensors.index.json", "config.json"]:
        assert (s.path / name).read_bytes() == (m.path / name).read_bytes(), name
    assert exported["progress"][-1] == 1.0 and exported["progress"] == sorted(exported["progress"])


def test_export_slices_experts_and_copies_everything_else(exported):
    plan, src, out = exported["plan"], exported["src"], exported["streamed"].path
    before, after = _tensors(src), _tensors(out)
    assert set(before) == set(after)
    sliced = 0
    for name, t in before.items():
        if name.endswith(("router.proj.weight", "router.per_expert_scale", "experts.gate_up_proj", "experts.down_proj")):
            layer = int(name.split("layers.")[1].split(".")[0])
            kept = list(plan.kept[plan.layer_indices.index(layer)])
            assert torch.equal(after[name], t[kept]), name
            sliced += 1
        else:
            assert torch.equal(after[name], t), name
    assert sliced == 4 * len(plan.layer_indices)
    if exported["kind"] == "multimodal":
        assert any(k.startswith("model.vision_tower.") for k in after)
    # config.json: only num_experts changed
    a, b = (json.loads((d / "config.json").read_text()) for d in (src, out))
    key = "text_config" if "text_config" in a else None
    ta, tb = (a[key], b[key]) if key else (a, b)
    assert tb["num_experts"] == plan.num_kept and ta["num_experts"] == plan.num_experts
    ta.pop("num_experts"), tb.pop("num_experts")
    assert a == b
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json",
              SCORES_FILE, PLAN_FILE, RECIPE_FILE, HEATMAP_FILE, STATS_FILE, "README.md"):
        assert (out / f).is_file(), f
    assert (out / "chat_template.jinja").read_bytes() == (src / "chat_template.jinja").read_bytes()


def test_export_reloads_and_matches_masked_view(exported):
    loaded, plan, out = exported["loaded"], exported["plan"], exported["streamed"].path
    assert exported["streamed"].max_abs_diff <= 1e-5
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(reloaded).__name__ == type(loaded.model).__name__
    ids = loaded.tokenizer("Hello, experts! 12 + 30 = 42", return_tensors="pt").input_ids
    with torch.no_grad():
        with masked_view(loaded, plan):
            masked = loaded.model(input_ids=ids).logits
        sliced = reloaded(input_ids=ids).logits
    assert (sliced - masked).abs().max().item() <= 1e-5


def test_recipe_scores_and_stats_are_complete(exported):
    out, plan, stats = exported["streamed"].path, exported["plan"], exported["stats"]
    recipe = json.loads((out / RECIPE_FILE).read_text())
    assert recipe["criterion"] == "reap" and recipe["compression_ratio"] == 0.5 and recipe["seed"] == 0
    assert recipe["num_experts_kept"] == plan.num_kept and "per_expert_scale" in recipe["gate_definition"]
    assert recipe["calibration"]["fingerprint"] == stats.fingerprint()
    assert recipe["calibration"]["tokens"] == stats.num_tokens and recipe["versions"]["torch"]
    assert recipe["super_expert_protection"]["enabled"] is False
    assert recipe["export"]["verification"]["max_abs_diff"] <= 1e-5
    assert any("reap_core export" in line for line in recipe["redo"])
    assert json.loads((out / PLAN_FILE).read_text())["kept"] == [list(k) for k in plan.kept]
    reloaded = ExpertStats.load(out / STATS_FILE)
    assert np.array_equal(reloaded.arrays["count"], stats.arrays["count"])


def test_model_card_metadata_and_body(exported):
    out, plan = exported["streamed"].path, exported["plan"]
    card = ModelCard.load(out / "README.md")
    data = card.data
    assert data.base_model == BASE and data.library_name == "transformers" and data.license == "apache-2.0"
    assert data.pipeline_tag == ("image-text-to-text" if exported["kind"] == "multimodal" else "text-generation")
    assert {"moe", "pruning", "reap", "expert-pruning", "gemma4"} <= set(data.tags)
    text = card.text
    for needle in ("| Experts per layer | 16 | 8 |", "Active parameters / token", "## How it was made",
                   "### Calibration data", "### Pruning configuration", "vllm serve", "from_pretrained",
                   "arxiv.org/abs/2510.13999", "Lasby", HEATMAP_FILE, "No evaluation results yet"):
        assert needle in text, needle
    assert f"{plan.num_pruned} of its {plan.num_experts} experts removed" in text
    assert "License: apache-2.0, as the base model." in text and f"[{BASE}](https://huggingface.co/{BASE})" in text
    usage = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    compile(usage, "usage", "exec")                                 # the template renders valid Python
    loader = "AutoModelForImageTextToText" if exported["kind"] == "multimodal" else "AutoModelForCausalLM"
    assert f'model = {loader}.from_pretrained(repo, dtype="auto", device_map="auto")' in usage
    assert f'repo = "{exported["streamed"].path.name}"' in usage


def test_card_with_evaluation_results(exported, tmp_path):
    from dataclasses import replace

    from reap_core.card import model_card

    export = plan_export(str(exported["src"]), exported["plan"], exported["stats"], tmp_path / "x", verify=False)
    recipe = json.loads((exported["streamed"].path / RECIPE_FILE).read_text())
    results = {"_description": "toy suite", "math (n=40)": {"Original": "36/40 (90%)", "Pruned": "34/40 (85%)"}}
    text = model_card(replace(export.card, eval_results=results), recipe).text
    section = text.split("## Evaluation\n\n")[1].split("\n\n## Usage")[0]
    assert section == ("toy suite\n\n| Task | Original | Pruned |\n|---|---|---|\n"
                       "| math (n=40) | 36/40 (90%) | 34/40 (85%) |")


def test_eval_results_render_as_a_table():
    table = eval_table({"_description": "toy suite, 40 items per domain", "math": {"original": 0.9, "pruned": 0.85},
                        "code": {"original": 0.7}})
    assert table.startswith("toy suite") and "| Task | original | pruned |" in table
    assert "| math | 0.9 | 0.85 |" in table and "| code | 0.7 | – |" in table


def _decode_png(data: bytes) -> np.ndarray:
    """Pillow, not our own offsets: verify() checks every chunk's CRC, then the pixels are decoded."""
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "PNG"
        img.verify()
    with Image.open(io.BytesIO(data)) as img:
        assert img.mode == "RGB"
        return np.asarray(img)


def test_png_bytes_decode_with_pillow():
    rgb = np.random.default_rng(0).integers(0, 256, size=(7, 11, 3), dtype=np.uint8)
    png = png_bytes(rgb)
    assert np.array_equal(_decode_png(png), rgb)
    broken = bytearray(png)
    broken[-20] ^= 0xFF                                         # a flipped byte inside the IDAT chunk
    with pytest.raises(SyntaxError, match="broken PNG file"):    # Pillow's CRC check catches it
        _decode_png(bytes(broken))


def test_heatmap_colours_follow_the_worked_example():
    """Cell colour = light * (1 - 0.85 t) + dark * 0.85 t, with t = the score's place between the
    layer's worst (0) and best (1); dark = blue (33, 102, 172) if kept, orange (217, 95, 2) if pruned;
    light = (247, 247, 247); 4 x 5 px cells, the last row and column of each a white grid line."""
    scores = np.array([[0.0, 1.0, 2.0], [3.0, 0.5, 1.0]])
    pruned = np.array([[True, True, False], [False, True, False]])
    light, best_kept = (247, 247, 247), (65, 124, 183)      # 247*0.15 + 33*0.85 = 65.1, ...
    cells = [[light, (234, 182, 143), best_kept],              # t = 0.5, pruned: 247*0.575 + 217*0.425 = 234.25, ...
             [best_kept, light, (211, 222, 234)]]              # t = 0.2, kept: 247*0.83 + 33*0.17 = 210.62, ...
    expected = np.full((8, 15, 3), 255, dtype=np.uint8)
    for r, row in enumerate(cells):
        for c, colour in enumerate(row):
            expected[4 * r:4 * r + 3, 5 * c:5 * c + 4] = colour
    assert np.array_equal(_decode_png(png_bytes(heatmap_rgb(scores, pruned, cell=(4, 5)))), expected)
    default = _decode_png(heatmap_png(scores, pruned))             # the file the export writes: 16 x 16 px cells
    assert default.shape == (2 * 16, 3 * 16, 3) and tuple(default[17, 5]) == best_kept


def test_interrupted_export_leaves_no_half_folder(exported, tmp_path, monkeypatch):
    if exported["kind"] != "causal":
        pytest.skip("one class is enough")
    plan, stats, src = exported["plan"], exported["stats"], exported["src"]
    out = tmp_path / "pruned"
    first = export_pruned(str(src), plan, stats, out, max_shard_bytes=SHARD, verify=False)
    snapshot = {f: (out / f).read_bytes() for f in first.files}
    real = shards.write_shard
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash mid-export")
        return real(*args, **kwargs)

    monkeypatch.setattr(shards, "write_shard", failing)
    other = make_plan(stats, 0.25, "frequency")
    for target in (out, tmp_path / "fresh"):
        calls.clear()
        with pytest.raises(RuntimeError, match="simulated crash"):
            export_pruned(str(src), other, stats, target, max_shard_bytes=SHARD, verify=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned"]          # no .partial, no "fresh"
    assert {f: (out / f).read_bytes() for f in first.files} == snapshot        # earlier export untouched
    assert sorted(p.name for p in out.iterdir()) == sorted(first.files)


def test_verification_failure_publishes_nothing(exported, tmp_path, monkeypatch):
    if exported["kind"] != "causal":
        pytest.skip("one class is enough")
    import reap_core.export as export_mod

    monkeypatch.setitem(export_mod.TOLERANCE, torch.float32, -1.0)     # any difference now fails
    with pytest.raises(ExportError, match="verification failed"):
        export_pruned(str(exported["src"]), exported["plan"], exported["stats"], tmp_path / "bad",
                      loaded=exported["loaded"], max_shard_bytes=SHARD)
    assert list(tmp_path.iterdir()) == []


def test_a_plan_or_statistics_of_another_model_are_refused(exported, tmp_path):
    from reap_core.plan import plan_from_scores

    plan, stats = exported["plan"], exported["stats"]
    layers = list(plan.layer_indices)
    wrong = plan_from_scores(np.zeros((len(layers), 8)), 0.25, top_k=2, layer_indices=layers)
    with pytest.raises(ExportError) as err:
        export_pruned(str(exported["src"]), wrong, stats, tmp_path / "x", verify=False)
    assert str(err.value) == "the plan is for 8 experts per layer, the model has 16"
    other = ExpertStats(model_id="another-model", layer_indices=layers, num_experts=8, top_k=2,
                        categories=stats.categories, arrays={k: v[:, :, :8] for k, v in stats.arrays.items()},
                        tokens_per_category=stats.tokens_per_category, calibration={})
    with pytest.raises(StatisticsError) as err:
        export_pruned(str(exported["src"]), make_plan(other, 0.25, "reap"), other, tmp_path / "x", verify=False)
    assert str(err.value) == (f"these statistics are for {len(layers)} MoE layers x 8 experts (another-model), "
                              f"but the model has {len(layers)} x 16")
    assert list(tmp_path.iterdir()) == []


def test_the_plan_writes_nothing_and_is_what_gets_written(exported, tmp_path):
    """plan_export decides the layout before a byte is written; the export then writes exactly that
    layout, which is the one huggingface_hub computes for the same (sliced) tensors."""
    plan, stats, src = exported["plan"], exported["stats"], exported["src"]
    export = plan_export(str(src), plan, stats, tmp_path / "planned", max_shard_bytes=SHARD, verify=False)
    assert list(tmp_path.iterdir()) == []
    out = exported["streamed"].path
    assert sorted(export.layout.names) == sorted(f for f in exported["streamed"].files
                                                 if f.endswith(".safetensors") or f.endswith(".index.json"))
    for name, entries in export.layout.files.items():
        with safe_open(out / name, framework="pt") as h:
            assert sorted(h.keys()) == sorted(e.name for e in entries), name
    written = _tensors(out)
    in_order = {k: written[k] for k in sorted(written, key=shards.natural_key)}
    split = split_torch_state_dict_into_shards(in_order, max_shard_size=SHARD)
    assert {f: sorted(ks) for f, ks in split.filename_to_tensors.items()} == \
        {f: sorted(e.name for e in es) for f, es in export.layout.files.items()}
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == split.tensor_to_filename
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in written.values())
    assert index["metadata"]["total_parameters"] == sum(t.numel() for t in written.values())


def _raising(exc):
    def from_pretrained(cls, *args, **kwargs):
        raise exc
    return classmethod(from_pretrained)


def test_verification_out_of_memory_and_bugs_say_what_happened(exported, tmp_path, monkeypatch):
    """Reloading can run out of memory (a user's machine: a clear message) or hit a bug (a traceback);
    neither may read as "the exported folder does not load"."""
    if exported["kind"] != "causal":
        pytest.skip("one class is enough")
    loaded, plan, folder = exported["loaded"], exported["plan"], exported["streamed"].path
    for raised in (torch.OutOfMemoryError("CUDA out of memory"), MemoryError()):
        monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", _raising(raised))
        with pytest.raises(ExportError) as err:
            verify_export(folder, loaded, plan)
        assert str(err.value) == ("not enough memory to reload the export for verification (it needs as much as the "
                                  "pruned model): export without verification (CLI: --no-verify), or on a machine "
                                  "with more memory; nothing was written")
    bug = TypeError("from_pretrained() got an unexpected keyword argument")
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", _raising(bug))
    with pytest.raises(TypeError) as err:
        verify_export(folder, loaded, plan)
    assert err.value is bug


# --- push -------------------------------------------------------------------------------------

@pytest.fixture
def hub_env(monkeypatch):
    allow_local_hub(monkeypatch)


def test_push_uploads_every_file_byte_identical(exported, hub_env, capsys, caplog):
    if exported["kind"] != "multimodal":
        pytest.skip("one class is enough")
    folder = exported["streamed"].path
    steps = []
    with FakeHub(token=TOKEN) as hub:
        url = push_folder(folder, "tester/tiny-pruned", token=TOKEN, private=True, endpoint=hub.endpoint,
                          progress=lambda f, m: steps.append((f, m)))
        assert url == f"{hub.endpoint}/tester/tiny-pruned"
        files = hub.repos["tester/tiny-pruned"]
        local = {p.name: p.read_bytes() for p in folder.iterdir()}
        assert files == local                                   # every file, byte-identical, nothing else
        assert hub.private["tester/tiny-pruned"] and len(hub.commits) == 1
        assert any(r.startswith("PUT /lfs-upload/") for r in hub.requests)   # weights went through LFS
        # pushing again reuses the repo; a bare name gets the account's namespace
        push_folder(folder, "tiny-pruned", token=TOKEN, endpoint=hub.endpoint)
        assert len(hub.commits) == 2 and hub.commits[1]["repo"] == "tester/tiny-pruned"
    assert steps[-1][0] == 1.0
    out = capsys.readouterr()
    assert TOKEN not in out.out + out.err + caplog.text + "".join(m for _, m in steps)
    assert not any(TOKEN.encode() in p.read_bytes() for p in folder.rglob("*") if p.is_file())
    assert not (folder / ".cache").exists()


def test_cli_export_and_push(exported, tmp_path, monkeypatch, capsys):
    """`python -m reap_core export` streams and verifies; `push` without a login is one clear line.
    (main() in-process: a subprocess would spend ~8 s importing torch on this machine.)"""
    from reap_core.cli import main

    if exported["kind"] != "causal":
        pytest.skip("one class is enough")
    stats_file = exported["stats"].save(tmp_path / "stats.npz")
    assert main(["export", "--model", str(exported["src"]), "--stats", str(stats_file), "--ratio", "0.5",
                 "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "streaming" in out and "max |Δ logits|" in out and "tolerance" in out and "1e-05" in out
    ref = export_pruned(str(exported["src"]), exported["plan"], exported["stats"], tmp_path / "ref", verify=False)
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == (ref.path / "model.safetensors").read_bytes()

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    assert main(["push", "--folder", str(tmp_path / "out"), "--repo", "me/x"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: not logged in")
    assert main(["push", "--folder", str(tmp_path / "out"), "--repo", "me/bad name"]) == 2
    assert "error: invalid repository name" in capsys.readouterr().err
