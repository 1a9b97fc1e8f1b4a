"""Export (streaming == in memory, reloadable, equal to the masked view, atomic), the model card,
the heatmap PNG, and the push to a fake Hub on 127.0.0.1 (no real network)."""

import json
import struct
import zlib

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from reap_core import shards
from reap_core.card import HEATMAP_FILE, RECIPE_FILE, STATS_FILE, eval_table
from reap_core.export import ExportError, export_pruned
from reap_core.heatmap_png import heatmap_rgb, png_bytes
from reap_core.hub import PushError, push_folder, validate_repo_id
from reap_core.masking import masked_view
from reap_core.model import load_model
from reap_core.observer import observe
from reap_core.plan import make_plan
from reap_core.prune import PLAN_FILE, SCORES_FILE
from reap_core.stats import ExpertStats
from reap_core.tiny import build_tiny_model

from fake_hub import FakeHub

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


def test_eval_results_render_as_a_table():
    table = eval_table({"_description": "toy suite, 40 items per domain", "math": {"original": 0.9, "pruned": 0.85},
                        "code": {"original": 0.7}})
    assert table.startswith("toy suite") and "| Task | original | pruned |" in table
    assert "| math | 0.9 | 0.85 |" in table and "| code | 0.7 | – |" in table


def test_heatmap_png_decodes_to_the_image():
    scores = np.array([[0.0, 1.0, 2.0], [3.0, 0.5, 1.0]])
    pruned = np.array([[True, False, False], [False, True, False]])
    rgb = heatmap_rgb(scores, pruned, cell=(4, 5))
    assert rgb.shape == (8, 15, 3)
    png = png_bytes(rgb)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (15, 8)
    idat_len = struct.unpack(">I", png[33:37])[0]
    raw = zlib.decompress(png[41:41 + idat_len])
    assert np.array_equal(np.frombuffer(raw, np.uint8).reshape(8, 1 + 15 * 3)[:, 1:].reshape(8, 15, 3), rgb)
    # kept best (blue) and pruned cells (orange hue) are told apart
    best_kept, pruned_cell = rgb[1, 11], rgb[5, 6]
    assert best_kept[2] > best_kept[0] and pruned_cell[0] >= pruned_cell[2]


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


def test_statistics_of_another_model_are_refused(exported, tmp_path):
    from reap_core.plan import plan_from_scores

    wrong = plan_from_scores(np.zeros((len(exported["plan"].layer_indices), 8)), 0.25, top_k=2,
                             layer_indices=list(exported["plan"].layer_indices))
    with pytest.raises(Exception, match="experts"):
        export_pruned(str(exported["src"]), wrong, exported["stats"], tmp_path / "x", verify=False)
    assert list(tmp_path.iterdir()) == []


# --- push -------------------------------------------------------------------------------------

@pytest.fixture
def hub_env(monkeypatch):
    """Let huggingface_hub talk to 127.0.0.1 (tests run with HF_HUB_OFFLINE=1), over plain LFS."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.delenv("HF_TOKEN", raising=False)


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


def test_push_errors_are_clear(exported, hub_env, monkeypatch):
    if exported["kind"] != "causal":
        pytest.skip("one class is enough")
    folder = exported["streamed"].path
    with FakeHub(token=TOKEN) as hub:
        with pytest.raises(PushError, match="not logged in.*invalid or expired") as err:
            push_folder(folder, "tester/x", token="hf_wrong", endpoint=hub.endpoint)
        assert "hf_wrong" not in str(err.value)
        hub.fail_with["/api/repos/create"] = 403
        with pytest.raises(PushError, match="no write permission for 'tester/x'"):
            push_folder(folder, "tester/x", token=TOKEN, endpoint=hub.endpoint)
        hub.fail_with = {"/api/models/tester/y/preupload": 403}
        with pytest.raises(PushError, match="no write permission"):
            push_folder(folder, "tester/y", token=TOKEN, endpoint=hub.endpoint)
        assert hub.repos["tester/y"] == {}
    with FakeHub(token=TOKEN, role="read") as hub:
        with pytest.raises(PushError, match="read-only"):
            push_folder(folder, "tester/x", token=TOKEN, endpoint=hub.endpoint)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    with pytest.raises(PushError, match="not logged in"):
        push_folder(folder, "tester/x", token=None, endpoint="http://127.0.0.1:9")
    with pytest.raises(PushError, match="could not reach"):
        push_folder(folder, "tester/x", token=TOKEN, endpoint="http://127.0.0.1:9")   # nothing listens there
    with pytest.raises(PushError, match="not an exported model folder"):
        push_folder(folder / "missing", "tester/x", token=TOKEN)


SERVER_TOKEN = "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9"


def test_public_push_never_uses_the_servers_token(exported, hub_env, monkeypatch):
    """Public mode (allow_saved_token=False) on a Space whose HF_TOKEN secret is set: a visitor who is
    not signed in is refused before any request; a signed-in one pushes with their own token only."""
    if exported["kind"] != "causal":
        pytest.skip("one class is enough")
    folder = exported["streamed"].path
    monkeypatch.setenv("HF_TOKEN", SERVER_TOKEN)
    with FakeHub(token=SERVER_TOKEN) as hub:            # the server's token would be accepted here
        with pytest.raises(PushError) as err:
            push_folder(folder, "tester/x", token=None, endpoint=hub.endpoint, allow_saved_token=False)
        assert str(err.value) == ("not signed in: sign in with the Sign in button to push (this server never "
                                  "pushes with its own token)")
        assert hub.requests == [] and "tester/x" not in hub.repos
        # the control: locally (the default) the same call pushes with HF_TOKEN, so the refusal is the policy
        push_folder(folder, "tester/x", token=None, endpoint=hub.endpoint)
        assert hub.repos["tester/x"] and f"Bearer {SERVER_TOKEN}" in hub.authorizations
    with FakeHub(token=TOKEN) as hub:                   # a signed-in visitor
        push_folder(folder, "tester/y", token=TOKEN, endpoint=hub.endpoint, allow_saved_token=False)
        assert hub.repos["tester/y"] == {p.name: p.read_bytes() for p in folder.iterdir()}
        assert set(hub.authorizations) - {None} == {f"Bearer {TOKEN}"}     # None: the pre-signed LFS PUTs


def test_private_push_onto_an_existing_public_repo_is_refused(exported, hub_env):
    """create_repo(private=True, exist_ok=True) leaves an existing public repo public: uploading would
    publish what the user meant to keep private, under a "Pushed" message."""
    if exported["kind"] != "causal":
        pytest.skip("one class is enough")
    folder = exported["streamed"].path
    with FakeHub(token=TOKEN) as hub:
        hub.add_model("tester/public-one", {"README.md": b"# public\n"})
        with pytest.raises(PushError) as err:
            push_folder(folder, "public-one", token=TOKEN, private=True, endpoint=hub.endpoint)
        assert str(err.value) == ("'tester/public-one' already exists and is public; the Private box does not "
                                  "change an existing repo \u2014 make it private on the Hub, or untick Private")
        assert hub.commits == [] and hub.repos["tester/public-one"] == {"README.md": b"# public\n"}
        assert not any("preupload" in r or "lfs" in r for r in hub.requests)     # refused before uploading
        push_folder(folder, "tester/public-one", token=TOKEN, endpoint=hub.endpoint)     # Private unticked: fine
        hub.add_model("tester/private-one", {}, private=True)
        push_folder(folder, "tester/private-one", token=TOKEN, private=True, endpoint=hub.endpoint)
        assert [c["repo"] for c in hub.commits] == ["tester/public-one", "tester/private-one"]
        assert hub.private == {"tester/public-one": False, "tester/private-one": True}


@pytest.mark.parametrize("name", ["", "a/b/c", "user/bad name", "user/-x", "user/x..y", "user/x.git", "ü/x",
                                  "user/" + "x" * 97])
def test_invalid_repo_names(name):
    with pytest.raises(PushError, match="invalid repository name"):
        validate_repo_id(name)


def test_valid_repo_names():
    assert validate_repo_id(" me/gemma-4-26b-a4b-it-REAP-0.2 ") == "me/gemma-4-26b-a4b-it-REAP-0.2"
    assert validate_repo_id("just-a-name") == "just-a-name"


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
    assert "streaming" in out and "max |delta logits|" in out
    ref = export_pruned(str(exported["src"]), exported["plan"], exported["stats"], tmp_path / "ref", verify=False)
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == (ref.path / "model.safetensors").read_bytes()

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    assert main(["push", "--folder", str(tmp_path / "out"), "--repo", "me/x"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: not logged in")
    assert main(["push", "--folder", str(tmp_path / "out"), "--repo", "me/bad name"]) == 2
    assert "error: invalid repository name" in capsys.readouterr().err
