"""End to end through the app's HTTP API (gradio_client), on the bundled model, with `python app.py`
started once for this module as a real subprocess.

Nothing here depends on answer quality (the bundled model may be an interim, half-trained one):
we check that every step answers, that user mistakes come back as an error status instead of an
exception, that the session keeps working after each mistake, that greedy answers are
reproducible, and that two sessions at different ratios chatting at the same time do not see
each other's mask.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

from app_server import running_app  # noqa: E402  (tests/ is on sys.path via conftest / rootdir)

FAILED = ("**Error:**", "**Stopped:**")   # how a refused or cancelled action starts (no emoji: no font needed)
BUNDLED = "toy-gemma4-moe"
TOY_CATEGORIES = ["toy-math", "toy-code"]
SAMPLES, MAX_TOKENS = 2, 64         # tiny calibration: a second on CPU
CHAT_TOKENS = 24
ALL = "all categories"


# --- helpers ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def app(tmp_path_factory):
    # an empty HF_HOME: no saved Hub token, so "not logged in" is what the push must say
    # runs in a temporary folder: "." and relative export paths land there, never in the checkout
    cwd = tmp_path_factory.mktemp("app-cwd")
    (cwd / "user-file.txt").write_text("mine")
    env = {"HF_HOME": str(tmp_path_factory.mktemp("hf-home")),
           "REAP_STUDIO_WORKDIR": str(tmp_path_factory.mktemp("app-work"))}
    with running_app(timeout=120, env=env, cwd=cwd) as a:
        yield a


def new_client(app) -> Client:
    return Client(app.url, verbose=False)


def load(client: Client, model_id: str = BUNDLED):
    card, _categories, _image = client.predict(model_id, api_name="/load_model")
    return card


def calibrate(client: Client, categories=TOY_CATEGORIES, upload=None, samples=SAMPLES):
    status, stats_file = client.predict(categories, samples, "", upload, MAX_TOKENS, api_name="/calibrate")
    if isinstance(stats_file, dict):  # a gr.update(value=..., visible=True)
        stats_file = stats_file.get("value")
    return status, stats_file


def view(client: Client, ratio: float, criterion: str = "reap"):
    return client.predict(criterion, ratio, False, False, ALL, api_name="/view")[:4]   # (+ the heatmap caption)


def prune(client: Client, ratio: float, criterion: str = "reap", protect: bool = False) -> str:
    status, *_panes = client.predict(criterion, ratio, protect, ALL, api_name="/prune")
    return status


def chat(client: Client, message: str = "What is 2 + 3?", max_new_tokens: int = CHAT_TOKENS):
    """(original pane, pruned pane, status) after one greedy turn on an empty conversation."""
    orig, pruned, status, _prompt_box = client.predict(message, None, [], [], 0.0, 0.95, max_new_tokens, False,
                                                       api_name="/chat")
    return orig, pruned, status


def text_of(message: dict) -> str:
    """Chatbot message content as text (Gradio 6 sends a list of typed parts)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if isinstance(content, dict):
        return str(content.get("text", ""))
    return ""


def shape_of(data) -> tuple[int, ...]:
    """Shape of a Plotly array, plain JSON lists or Plotly 6's {'bdata', 'dtype', 'shape'}."""
    if isinstance(data, dict) and "bdata" in data:
        import base64

        import numpy as np

        if data.get("shape"):
            return tuple(int(n) for n in str(data["shape"]).split(","))
        return (len(np.frombuffer(base64.b64decode(data["bdata"]), dtype=data["dtype"])),)
    if isinstance(data, list):
        return (len(data),) + (shape_of(data[0])[0:] if data and isinstance(data[0], list) else ())
    return ()


def answers(result) -> tuple[str, str]:
    """The final assistant answer of each pane (not the folded reasoning)."""
    orig, pruned, _ = result
    last = lambda pane: text_of([m for m in pane if m["role"] == "assistant"][-1])  # noqa: E731
    return last(orig), last(pruned)


def assert_warning(status: str, *needles: str) -> None:
    assert isinstance(status, str) and status.startswith(FAILED), f"expected an error status, got {status!r}"
    for needle in needles:
        assert needle.lower() in status.lower(), f"{needle!r} not in {status!r}"


def assert_ok(status: str) -> None:
    assert isinstance(status, str) and status.startswith("**Done:**"), f"expected a done status, got {status!r}"


@pytest.fixture(scope="module")
def pruned_client(app):
    """A session that went through load -> calibrate -> prune(0.5)."""
    c = new_client(app)
    load(c)
    assert_ok(calibrate(c)[0])
    assert_ok(prune(c, 0.5))
    return c


# --- the whole flow --------------------------------------------------------------------------

def test_full_flow(app):
    c = new_client(app)

    card, categories, _image = c.predict(BUNDLED, api_name="/load_model")
    assert BUNDLED in card and "Experts per layer" in card
    chosen = categories["value"] if isinstance(categories, dict) else categories
    assert set(chosen) >= set(TOY_CATEGORIES), "the bundled model should preselect the toy categories"

    status, stats_file = calibrate(c)
    assert_ok(status)
    assert "tokens" in status and "toy-math" in status and "toy-code" in status
    assert stats_file and str(stats_file).endswith(".npz")

    fig, table, category, _notice = view(c, 0.5)
    assert fig and fig.get("type") == "plotly"
    plot = json.loads(fig["plot"])
    heat = plot["data"][0]
    assert heat["type"] == "heatmap"
    assert shape_of(heat["z"]) == (4, 32)   # bundled model: 4 MoE layers x 32 experts
    pruned_marks = [t for t in plot["data"][1:] if t.get("type") == "scatter"]
    assert pruned_marks and shape_of(pruned_marks[0]["x"]) == (4 * 16,), "ratio 0.5 marks 16 pruned experts per layer"
    assert "Pruned (50%)" in table and "**16**" in table
    cat_choices = [ch[0] if isinstance(ch, (list, tuple)) else ch for ch in category.get("choices", [])]
    assert set(cat_choices) >= {ALL, *TOY_CATEGORIES}

    status = prune(c, 0.5)
    assert_ok(status)
    assert "16 of 32" in status

    t0 = time.perf_counter()
    result = chat(c)
    elapsed = time.perf_counter() - t0
    orig, pruned, chat_status = result
    assert chat_status == ""
    for pane in (orig, pruned):
        roles = [m["role"] for m in pane]
        assert roles[0] == "user" and text_of(pane[0]) == "What is 2 + 3?"
        assert roles[-1] == "assistant"
    a_orig, a_pruned = answers(result)
    assert a_orig.strip() and a_orig != "…", "original pane gave no answer"
    assert a_pruned.strip() and a_pruned != "…", "pruned pane gave no answer"
    assert elapsed < 60, f"one {CHAT_TOKENS}-token turn took {elapsed:.1f} s"

    # greedy: the same question again gives the same two answers
    assert answers(chat(c)) == (a_orig, a_pruned)


def test_image_chat_goes_to_both_panes(pruned_client, tmp_path):
    """A picture attached to a message reaches both models (the bundled model is multimodal): each pane
    answers about it, greedily and reproducibly, and a picture-free turn after it still works."""
    from reap_core import toy_tasks

    item = toy_tasks.generate("shapes", 1, toy_tasks.EVAL_SEED)[0]
    picture = tmp_path / "shape.png"
    item.image.save(picture)
    args = (item.prompt, handle_file(str(picture)), [], [], 0.0, 0.95, CHAT_TOKENS, False)
    result = pruned_client.predict(*args, api_name="/chat")
    assert result[2] == "", result[2]
    a_orig, a_pruned = answers(result[:3])
    assert a_orig.strip() and a_pruned.strip()
    assert toy_tasks.check("shapes", item, a_orig), a_orig         # the original sees the picture
    assert answers(pruned_client.predict(*args, api_name="/chat")[:3]) == (a_orig, a_pruned)
    without = pruned_client.predict(item.prompt, None, [], [], 0.0, 0.95, CHAT_TOKENS, False, api_name="/chat")
    assert without[2] == "" and answers(without[:3])[0].strip()


def test_second_session_reuses_cached_statistics(app, pruned_client):
    c = new_client(app)
    load(c)
    status, _ = calibrate(c)
    assert_ok(status)
    assert "cache" in status.lower(), f"same model + same data should come from the statistics cache: {status}"


# --- user mistakes: an error message, and the session keeps working --------------------------------

def test_unknown_model_id_fails_fast_then_loads(app):
    c = new_client(app)
    t0 = time.perf_counter()
    card = load(c, "no-such-org/no-such-model")
    elapsed = time.perf_counter() - t0
    assert_warning(card, "no-such-org/no-such-model")
    assert elapsed < 20, f"an unknown id offline must fail fast, took {elapsed:.1f} s"
    assert "Experts per layer" in load(c), "the bundled model must still load after a failed load"
    assert_ok(calibrate(c)[0])


def test_local_non_moe_model_is_refused(app, tmp_path):
    from transformers import LlamaConfig

    folder = tmp_path / "tiny-llama"
    LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=2, vocab_size=128).save_pretrained(folder)
    c = new_client(app)
    card = load(c, str(folder))
    assert_warning(card)
    assert "llama" in card.lower() or "moe" in card.lower() or "support" in card.lower(), card
    assert "Experts per layer" in load(c)


# --- other families (issue 12): the picker, and a tiny model of a family driven through every step -----

def test_picker_suggests_every_familys_flagships(app):
    import urllib.request

    from reap_core.studio import flagships

    with urllib.request.urlopen(app.url + "config", timeout=10) as resp:
        config = json.loads(resp.read())
    picker = next(c["props"] for c in config["components"]
                  if str(c.get("props", {}).get("label", "")).startswith("Model: pick one"))
    choices = [tuple(ch) for ch in picker["choices"]]
    assert choices[0][1] == BUNDLED and picker["value"] == BUNDLED          # the bundled model first, and the default
    values = [v for _label, v in choices]
    assert set(values) == {BUNDLED} | {f.hub_id for f in flagships()}
    labels = dict((v, label) for label, v in choices)
    assert labels["Qwen/Qwen3-Coder-480B-A35B-Instruct"] == (
        "Qwen3-Coder-480B-A35B-Instruct — qwen3_moe, 480.2B params (35.5B active), needs a GPU cluster and the Hub")
    assert "size not measured here" in labels["Qwen/Qwen3-235B-A22B"]


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    """Tiny random Qwen3-MoE (with a Qwen3-style ChatML template that reads enable_thinking) and GLM-4.5
    (shared experts, sigmoid router with a selection bias; the char tokenizer's own template), saved."""
    from reap_core.tiny import build_tiny_family, char_tokenizer
    from test_flagships import chatml_tokenizer

    dirs = {}
    for family, tok in (("qwen3_moe", chatml_tokenizer()), ("glm4_moe", char_tokenizer())):
        folder = tmp_path_factory.mktemp(f"tiny-{family}")
        build_tiny_family(family, vocab_size=len(tok)).save_pretrained(folder)
        tok.save_pretrained(folder)
        dirs[family] = folder
    return dirs


@pytest.mark.parametrize("family", ["qwen3_moe", "glm4_moe"])
def test_another_family_through_every_step(app, family_dirs, family):
    """Card, calibration, heatmap, size table, inspector, prune and chat on a local tiny model of another
    family (8 experts, top-2; MoE layers 0 and 2 of 3)."""
    c = new_client(app)
    card = load(c, str(family_dirs[family]))
    assert f"({family})" in card and "Gate (what REAP weighs)" in card and "Experts per layer | 8" in card
    if family == "glm4_moe":
        assert "| Shared experts | always on, never pruned (`mlp.shared_experts`) |" in card and "sigmoid" in card
    else:
        assert "Shared experts" not in card and "renormalised over the top-k" in card
    assert_ok(calibrate(c)[0])
    fig, table, _category, _notice = view(c, 0.5)
    heat = json.loads(fig["plot"])["data"][0]
    assert heat["type"] == "heatmap" and shape_of(heat["z"]) == (2, 8)
    assert "Pruned (50%)" in table and "| Experts per layer | 8 | **4** |" in table
    inspector = c.predict("L2", 3, api_name="/expert")
    assert inspector.startswith("**Expert 3, layer L2**"), inspector
    status = prune(c, 0.5)
    assert_ok(status)
    assert "4 of 8" in status
    orig, pruned, chat_status, _prompt = c.predict("What is 2 + 3?", None, [], [], 0.0, 0.95, 16, True,
                                                   api_name="/chat")     # thinking asked: on where it can be
    assert chat_status == ""
    for pane in (orig, pruned):
        assert [m["role"] for m in pane][0] == "user" and pane[-1]["role"] == "assistant"
    assert "Experts per layer" in load(c)                                    # back to the bundled model


def test_failed_load_keeps_previous_work(app):
    """DESIGN: errors never lose work already done. A typo in the model box must not wipe the
    statistics and pruned view of the model already loaded."""
    c = new_client(app)
    load(c)
    assert_ok(calibrate(c)[0])
    assert_ok(prune(c, 0.25))
    card = load(c, "no-such-org/no-such-model")
    assert_warning(card)
    # the message says which model is still loaded, and its card stays on the page
    assert f"Still loaded: `{BUNDLED}`" in card and "Experts per layer" in card, card
    orig, pruned, status = chat(c, max_new_tokens=16)
    assert not status.startswith(FAILED), status
    assert answers((orig, pruned, status))[1].strip()


PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


@pytest.mark.parametrize("name, content, needle", [
    ("calib.jsonl", "", "no samples"),
    ("calib.jsonl", '{"text": "fine"}\n{this is not json\n', "not valid json"),
    ("calib.jsonl", '{"neither": "text nor messages"}\n', "text"),
    ("calib.jsonl", PNG, "not a text file"),
    ("calib.txt", PNG, "not a text file"),
    ("calib.txt", "caf\xe9 au lait".encode("latin-1"), "utf-8"),
    ("calib.jsonl", '{"messages": [{"role": "wizard", "content": "hi"}]}\n', "wizard"),
    ("calib.jsonl", '{"messages": [{"role": "user"}]}\n', "content"),
], ids=["empty", "malformed-json", "wrong-fields", "png-as-jsonl", "png-as-txt", "latin-1", "unknown-role",
        "no-content"])
def test_bad_calibration_upload(app, tmp_path, name, content, needle):
    c = new_client(app)
    load(c)
    bad = tmp_path / name
    bad.write_bytes(content if isinstance(content, bytes) else content.encode())
    status, stats_file = calibrate(c, upload=handle_file(str(bad)))
    assert_warning(status, needle)
    assert not stats_file
    assert_ok(calibrate(c)[0])   # the built-in categories still work in the same session


def test_calibrate_with_nothing_chosen(app):
    c = new_client(app)
    load(c)
    assert_warning(calibrate(c, categories=[])[0], "category")
    assert_ok(calibrate(c)[0])


def test_steps_out_of_order(app):
    c = new_client(app)
    assert_warning(calibrate(c)[0], "load a model")
    assert_warning(view(c, 0.5)[1], "load a model")
    assert_warning(prune(c, 0.5), "load a model")      # the first missing step, not a later one
    assert_warning(chat(c)[2], "load a model")
    assert_warning(c.predict("", api_name="/export")[0], "load a model")
    load(c)
    assert_warning(view(c, 0.5)[1], "calibration")
    assert_warning(prune(c, 0.5), "calibration")
    assert_warning(chat(c)[2], "calibration")            # not "prune first": calibrating comes before
    assert_ok(calibrate(c)[0])
    orig, pruned, status = chat(c)
    assert_warning(status, "prune first")
    assert orig == [] and pruned == [], "a refused chat must not add the message to the panes"
    assert_ok(prune(c, 0.5))
    assert answers(chat(c))[1].strip()


def test_empty_message(pruned_client):
    orig, pruned, status = chat(pruned_client, message="   ")
    assert orig == [] and pruned == [] and status


def test_ratio_limits(pruned_client):
    """Toy model: 32 experts, top-4. 0.9 prunes floor(28.8) = 28 and keeps exactly 4 = top-k: allowed.
    0.95 (still on the slider) would keep 2: a clear message in the table and on Prune."""
    status = prune(pruned_client, 0.9)
    assert_ok(status)
    assert "28 of 32" in status and "4 kept" in status
    assert "**4**" in view(pruned_client, 0.9)[1]
    assert_warning(view(pruned_client, 0.95)[1], "fewer than the 4")
    assert_warning(prune(pruned_client, 0.95), "fewer than the 4")
    assert_ok(prune(pruned_client, 0.5))        # the session still works
    assert answers(chat(pruned_client, max_new_tokens=16))[1].strip()


# --- two sessions at once --------------------------------------------------------------------

def test_two_sessions_at_different_ratios_chat_concurrently(app):
    ratios = (0.25, 0.75)
    clients = [new_client(app) for _ in ratios]
    for c, r in zip(clients, ratios):
        load(c)
        assert_ok(calibrate(c)[0])
        assert_ok(prune(c, r))
    question = "Translate to French: the red house"
    tokens = 48                     # long enough for the two turns to overlap in time
    alone = [answers(chat(c, question, tokens)) for c in clients]
    assert alone[0][0] == alone[1][0], "the original pane must not depend on the session's ratio"

    together: list = [None, None]
    spans: list = [None, None]
    errors: list = []
    barrier = threading.Barrier(2)

    def run(i):
        try:
            barrier.wait(timeout=30)
            t0 = time.perf_counter()
            together[i] = answers(chat(clients[i], question, tokens))
            spans[i] = (t0, time.perf_counter())
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    (s0, e0), (s1, e1) = spans
    overlap = min(e0, e1) - max(s0, s1)
    assert overlap > 0, "the two chats ran one after the other (chat concurrency_limit < 2?)"
    assert together == alone, "a session's answers changed while another session chatted at another ratio"
    if alone[0][1] == alone[1][1]:
        pytest.skip("ratios 0.25 and 0.75 gave the same pruned answer: this run could not have detected a mask leak")


# --- export & push ---------------------------------------------------------------------------

def test_export_then_push_without_login(app, tmp_path):
    c = new_client(app)
    assert_warning(c.predict("repo-name", True, api_name="/push"), "export first")
    load(c)
    assert_ok(calibrate(c)[0])
    status, _zip = c.predict(str(tmp_path / "exp"), api_name="/export")
    assert_warning(status, "prune first")
    assert_ok(prune(c, 0.25))
    status, archive = c.predict(str(tmp_path / "exp"), api_name="/export")
    assert_ok(status)
    assert "verified" in status and (tmp_path / "exp" / "config.json").is_file()
    assert (tmp_path / "exp" / "reap_scores.json").is_file() and (tmp_path / "exp" / "README.md").is_file()
    assert archive and str(archive.get("value") if isinstance(archive, dict) else archive).endswith(".zip")
    assert_warning(c.predict("someone/pruned-toy", True, api_name="/push"), "not logged in")
    assert_warning(c.predict("bad name!", True, api_name="/push"))


# --- evaluate --------------------------------------------------------------------------------

def test_evaluate_step(app, tmp_path):
    c = new_client(app)
    status, _plot, *_ = (lambda r: r if isinstance(r, tuple) else (r,))(
        c.predict(["reap", "random"], "kl", 0.25, api_name="/fidelity"))
    assert_warning(status, "load a model first")
    load(c)
    assert_ok(calibrate(c)[0])
    status, plot = c.predict(["reap", "random"], "kl", 0.25, api_name="/fidelity")
    assert_ok(status)
    assert "| Ratio |" in status and plot and plot.get("type") == "plotly"
    assert_warning(c.predict(api_name="/generation_quality"), "prune first")
    assert_ok(prune(c, 0.5))
    table = c.predict(api_name="/generation_quality")
    assert "Loop" in table and "Collapse" in table
    table = c.predict(api_name="/task_accuracy")
    assert "toy" in table.lower() or "math" in table
    # the results flow into the exported model card
    status, _ = c.predict(str(tmp_path / "exp"), api_name="/export")
    assert_ok(status)
    card = (tmp_path / "exp" / "README.md").read_text()
    assert "KL" in card


# --- issue 9: what a careless local user can do ---------------------------------------------

def test_export_never_replaces_what_is_not_ours(app, pruned_client, tmp_path):
    """Locally a path may be given, but only an empty folder or an earlier export of ours is replaced."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "main.py").write_text("print('mine')")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    for folder, needle in ((".", "not written by REAP Studio"), (str(project), "not written by REAP Studio"),
                           (str(a_file), "not a folder"), ("/dev/null", "not a folder")):
        status, archive = pruned_client.predict(folder, api_name="/export")
        assert_warning(status, needle)
    assert (project / "main.py").read_text() == "print('mine')" and a_file.read_text() == "mine"
    assert (app.cwd / "user-file.txt").read_text() == "mine"          # "." is the app's working folder
    target = tmp_path / "exp"
    assert_ok(pruned_client.predict(str(target), api_name="/export")[0])
    # exporting again to the same folder: refused unless asked (never a silent replace), then replaced
    assert_warning(pruned_client.predict(str(target), False, api_name="/export")[0], "already holds an export")
    status = pruned_client.predict(str(target), True, api_name="/export")[0]
    assert_ok(status)
    assert "replaced the earlier export" in status
    assert (target / "reap_plan.json").is_file()


def test_clear_during_streaming_stops_the_answer(pruned_client):
    job = pruned_client.submit("Write a very long story about a robot.", None, [], [], 1.5, 1.0, 1024, False,
                               api_name="/chat")
    deadline = time.time() + 60
    while len(job.outputs()) < 2 and not job.done() and time.time() < deadline:
        time.sleep(0.05)
    if job.done():
        pytest.skip("the model finished its answer before Clear could be pressed")
    pruned_client.predict(api_name="/clear")
    time.sleep(2)
    settled = len(job.outputs())
    time.sleep(3)
    assert len(job.outputs()) == settled, "the answer kept growing after Clear"
    assert job.done()


def test_cancel_stops_a_running_calibration(app):
    c = new_client(app)
    load(c)
    assert_ok(calibrate(c)[0])                            # statistics that the cancel must not lose
    job = c.submit(["toy-math", "toy-code", "toy-tools", "toy-facts", "toy-translation"], 64, "", None, 512,
                   api_name="/calibrate")
    time.sleep(1.5)
    if job.done():
        pytest.skip("the calibration finished before Cancel could be pressed")
    c.predict(api_name="/cancel")
    t0 = time.perf_counter()
    status, _ = job.result(timeout=120)
    assert_warning(status, "cancelled")
    assert time.perf_counter() - t0 < 30, "the calibration kept running after Cancel"
    assert_ok(prune(c, 0.25))                             # the earlier statistics are still there


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_calibration_upload_with_a_byte_order_mark(app, tmp_path, encoding):
    c = new_client(app)
    load(c)
    good = tmp_path / "calib.jsonl"
    good.write_bytes('{"text": "The capital of France is Paris."}\n{"text": "2 + 2 = 4"}\n'.encode(encoding))
    status, stats_file = calibrate(c, upload=handle_file(str(good)))
    assert_ok(status)
    assert "2 samples" in status


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04truncated", None], ids=["empty", "garbage", "truncated"])
def test_bad_statistics_upload(pruned_client, tmp_path, content):
    """Never a bare 'Error': a message, and the session's statistics and prune are kept."""
    bad = tmp_path / "stats.npz"
    if content is None:   # the first half of a real statistics file
        _status, real = calibrate(pruned_client)
        data = Path(real).read_bytes()
        content = data[: len(data) // 2]
    bad.write_bytes(content)
    status = pruned_client.predict(handle_file(str(bad)), api_name="/upload_stats")
    assert_warning(status, "stats.npz")
    assert_ok(prune(pruned_client, 0.5))


# --- issue 16: prune or merge ---------------------------------------------------------------------

def test_merge_in_the_app_chat_evaluate_export(app, tmp_path):
    c = new_client(app)
    status, *_ = c.predict("ream", 0.5, api_name="/merge")
    assert_warning(status, "load a model first")
    load(c)
    assert_ok(calibrate(c)[0])
    assert_warning(c.predict("merged", api_name="/pick_variant")[0], "merge first")
    assert_ok(prune(c, 0.5))
    pruned_answers = answers(chat(c))
    status, head, variant = c.predict("ream", 0.5, api_name="/merge")
    assert_ok(status)
    assert "merged into 16" in status and " MB" in status and "**Merged**" in head
    assert (variant.get("value") if isinstance(variant, dict) else variant) == "merged"
    merged_answers = answers(chat(c))
    assert merged_answers[0] == pruned_answers[0]          # the original pane does not change
    # back to the prune and forth again: the panes follow, the merged model is not rebuilt
    status, head = c.predict("pruned", api_name="/pick_variant")
    assert_ok(status) and "**Pruned**" in head
    assert answers(chat(c)) == pruned_answers
    status, head = c.predict("merged", api_name="/pick_variant")
    assert "Merged view active" in status and "**Merged**" in head
    assert answers(chat(c)) == merged_answers
    # (task accuracy and generation quality of a merge run live for minutes: tests/test_merging.py covers them)
    status, plot = c.predict(["reap", "merge:ream"], "kl", 0.5, api_name="/fidelity")
    assert_ok(status)
    assert "REAM merge" in status and "REAP" in status
    status, _ = c.predict(str(tmp_path / "merged"), api_name="/export")
    assert_ok(status)
    recipe = json.loads((tmp_path / "merged" / "reap_recipe.json").read_text())
    assert recipe["merge"]["method"] == "ream" and recipe["num_experts_kept"] == 16
    assert "merged model in memory" in status


# --- issue 14: a model larger than the machine, in the app ------------------------------------------

def test_app_calibrates_layer_by_layer_when_the_model_does_not_fit(tmp_path_factory):
    """REAP_STUDIO_LAYER_BY_LAYER=1 stands for 'the weights do not fit': the card says so, calibration
    runs one decoder layer at a time, and its statistics are the one-pass statistics the demo pack stored.
    The app runs as on a ZeroGPU Space (tests/fixtures/zero_gpu: spaces.GPU forks a worker per call):
    the recording pass and each layer are calls of their own, each given a duration."""
    import numpy as np

    from reap_core.calibration import TOY_PREFIX
    from reap_core.calibration_sources import builtin_categories
    from reap_core.demo import DEFAULT_CALIBRATION, STATS_FILE
    from reap_core.stats import ExpertStats

    env = {"HF_HOME": str(tmp_path_factory.mktemp("hf-home-layered")),
           "REAP_STUDIO_WORKDIR": str(tmp_path_factory.mktemp("app-work-layered")),
           "REAP_STUDIO_LAYER_BY_LAYER": "1", "SPACES_ZERO_GPU": "true",
           "ZERO_GPU_STUB_LOG": str(tmp_path_factory.mktemp("zero-gpu") / "calls.jsonl"),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent / "fixtures" / "zero_gpu"),
                                          os.environ.get("PYTHONPATH", "")])}
    with running_app(timeout=120, env=env, cwd=tmp_path_factory.mktemp("app-cwd-layered")) as a:
        c = new_client(a)
        card = load(c)
        assert "Layer by layer" in card and "decoder layers stay on disk" in card
        toy = [cat for cat in builtin_categories() if cat.startswith(TOY_PREFIX)]   # the default calibration
        status, stats_file = c.predict(toy, DEFAULT_CALIBRATION["samples_per_category"], "", None,
                                       DEFAULT_CALIBRATION["max_tokens"], False, api_name="/calibrate")
        assert_ok(status)
        path = stats_file.get("value") if isinstance(stats_file, dict) else stats_file
        layered = ExpertStats.load(path)
        assert layered.calibration["sequential"]["layers"] == 4
        calls = [json.loads(line) for line in Path(env["ZERO_GPU_STUB_LOG"]).read_text().splitlines()]
        assert [c["function"] for c in calls] == ["_record_step"] + ["_layer_step"] * 4
        assert calls[0]["duration"] == 60 and all(c["duration"] >= 10 for c in calls)
        one_pass = ExpertStats.load(STATS_FILE)     # the default calibration, observed in one pass
        assert layered.fingerprint() == one_pass.fingerprint()
        for name in ("count", "gate_sum", "gated_norm_sum", "norm_max"):
            a_, b_ = layered.arrays[name], one_pass.arrays[name]
            assert np.array_equal(a_, b_) if name == "count" else np.allclose(a_, b_, rtol=1e-5, atol=1e-7), name
        assert_ok(prune(c, 0.5))
        orig, pruned, chat_status = chat(c, max_new_tokens=16)   # the layers come from disk at every step
        assert chat_status == "" and answers((orig, pruned, chat_status))[0].strip()


def test_a_view_drawn_from_the_same_inputs_is_skipped():
    """app.DrawnViews: the same session, view and inputs (objects by identity) is a repeat; anything else,
    another session, or a direct call without a request is drawn."""
    from types import SimpleNamespace

    import app as studio

    views = studio.DrawnViews()
    one, two = SimpleNamespace(session_hash="one"), SimpleNamespace(session_hash="two")
    stats = object()
    assert not views.repeat(one, "view", "reap", 0.5, stats)
    assert views.repeat(one, "view", "reap", 0.5, stats)
    assert not views.repeat(one, "view", "reap", 0.55, stats)          # the ratio moved
    assert not views.repeat(one, "view", "reap", 0.55, object())       # new statistics
    assert not views.repeat(two, "view", "reap", 0.55, stats)          # another visitor
    assert not views.repeat(one, "compare", "reap", 0.55, stats)       # another view
    assert not views.repeat(None, "view", "reap", 0.55, stats) and not views.repeat(None, "view", "reap", 0.55, stats)
    views.forget("one")
    assert not views.repeat(one, "compare", "reap", 0.55, stats)
