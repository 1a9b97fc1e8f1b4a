"""The app as a public Space, tried as a hostile visitor and a careless one would (issue 9).

One `python app.py` subprocess for the module, started the way a Hugging Face Space starts it:
SPACE_ID and the OAuth variables set (so the Sign-in button and gradio's OAuth routes are live —
which needs `gradio[oauth]`), the owner's HF_TOKEN in the environment, and the Hub replaced by the
local FakeHub. A "signed-in visitor" is a gradio_client that hands its own token to the endpoints
that take a gr.OAuthToken; an anonymous visitor hands none. Nothing here touches anything
outside pytest's temporary folders.
"""

from __future__ import annotations

import json
import os
import stat
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client  # noqa: E402

from app_server import running_app  # noqa: E402
from fake_hub import FakeHub  # noqa: E402
from reap_core.workspace import session_tag  # noqa: E402

BUNDLED = "toy-gemma4-moe"
VISITOR, OWNER = "hf_visitor_token_1234", "hf_owner_secret_5678"
NO_PATHS = "server paths are not accepted"


@pytest.fixture(scope="module")
def hub():
    with FakeHub(token=VISITOR, user="visitor") as h:
        yield h


@pytest.fixture(scope="module")
def openid_provider():
    """Serves the one document authlib reads before redirecting a visitor to log in."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            base = f"http://127.0.0.1:{self.server.server_address[1]}"
            body = json.dumps({"issuer": base, "authorization_endpoint": f"{base}/oauth/authorize",
                               "token_endpoint": f"{base}/oauth/token", "jwks_uri": f"{base}/oauth/jwks"}).encode()
            self.send_response(200 if self.path.startswith("/.well-known/openid-configuration") else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("work")
    leftover = root / "sessions" / "from-an-earlier-run"
    leftover.mkdir(parents=True)
    (leftover / "stale.zip").write_bytes(b"z" * 100)
    return root


@pytest.fixture(scope="module")
def space(work, hub, openid_provider, tmp_path_factory):
    env = {"SPACE_ID": "tester/reap-studio", "SYSTEM": "spaces", "OAUTH_CLIENT_ID": "fake-client", "OAUTH_CLIENT_SECRET": "fake-secret",
           "OAUTH_SCOPES": "openid profile write-repos", "OPENID_PROVIDER_URL": openid_provider,
           "HF_TOKEN": OWNER, "HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1",
           "HF_HOME": str(tmp_path_factory.mktemp("hf-home")), "REAP_STUDIO_WORKDIR": str(work)}
    # "~", "." and "../" of the app all lie inside temporary folders of this module
    base = tmp_path_factory.mktemp("space")
    (base / "home").mkdir()
    (base / "cwd").mkdir()
    env["HOME"] = str(base / "home")
    with running_app(timeout=120, env=env, cwd=base / "cwd") as a:
        yield a


def visitor(space, signed_in: bool = False) -> Client:
    return Client(space.url, verbose=False, oauth_token=VISITOR if signed_in else None)


def warning(status: str, *needles: str) -> None:
    assert isinstance(status, str) and status.startswith(("**Error:**", "**Stopped:**")), \
        f"expected an error status, got {status!r}"
    for needle in needles:
        assert needle.lower() in status.lower(), f"{needle!r} not in {status!r}"


def ok(status: str) -> None:
    assert isinstance(status, str) and status.startswith("**Done:**"), f"expected a done status, got {status!r}"


def ready(c: Client, ratio: float = 0.25) -> None:
    c.predict(BUNDLED, api_name="/load_model")
    ok(c.predict(["toy-math"], 2, "", None, 64, api_name="/calibrate")[0])
    ok(c.predict("reap", ratio, False, "all categories", api_name="/prune")[0])


def export(c: Client, folder: str = ""):
    status, archive = c.predict(folder, api_name="/export")
    return status, (archive.get("value") if isinstance(archive, dict) else archive)


# --- start-up -----------------------------------------------------------------------------

def test_starts_as_a_space_in_public_mode_and_cleans_old_files(space, work, openid_provider):
    page = urllib.request.urlopen(space.url, timeout=10).read().decode()
    assert "Public mode" in page and "tester/reap-studio" in page        # the footer says why
    assert not (work / "sessions" / "from-an-earlier-run").exists()      # cleaned at start
    # gradio's OAuth routes are live (authlib installed): the login redirects to the provider
    req = urllib.request.Request(space.url + "login/huggingface")
    opener = urllib.request.build_opener(type("NoRedirect", (urllib.request.HTTPRedirectHandler,),
                                              {"redirect_request": lambda *a, **k: None}))
    try:
        status, location = opener.open(req, timeout=10).status, ""
    except urllib.error.HTTPError as exc:
        status, location = exc.code, exc.headers.get("Location", "")
    assert status in (302, 303, 307), f"/login/huggingface answered {status}"
    assert location.startswith(f"{openid_provider}/oauth/authorize") and "client_id=fake-client" in location


# --- 1 + 4: exports -----------------------------------------------------------------------

@pytest.mark.parametrize("folder", ["{victim}", "~", "../", ".", "/dev/null", "exports/x", "{victim}/../victim"])
def test_export_folder_field_is_refused(space, tmp_path, folder):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    c = visitor(space)
    ready(c)
    status, archive = export(c, folder.format(victim=victim))
    warning(status, NO_PATHS)
    assert (victim / "keep.txt").read_text() == "mine" and sorted(p.name for p in victim.iterdir()) == ["keep.txt"]
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert not archive


def session_folder(work: Path, c: Client) -> Path:
    return work / "sessions" / session_tag(c.session_hash)


def test_each_session_exports_and_pushes_its_own_model(space, hub, work):
    a, b = visitor(space, signed_in=True), visitor(space, signed_in=True)
    ready(a, 0.25)
    ready(b, 0.5)
    for c, ratio in ((a, 0.25), (b, 0.5)):
        status, archive = export(c)
        ok(status)
        names = zipfile.ZipFile(archive).namelist()
        assert "reap_plan.json" in names and "config.json" in names
        plans = list((session_folder(work, c) / "exports").glob("*/reap_plan.json"))
        assert len(plans) == 1 and json.loads(plans[0].read_text())["compression_ratio"] == ratio
    ok(b.predict("visitor/b-model", True, api_name="/push"))
    ok(a.predict("visitor/a-model", True, api_name="/push"))
    ratio_of = lambda repo: json.loads(hub.repos[repo]["reap_plan.json"])["compression_ratio"]  # noqa: E731
    assert ratio_of("visitor/a-model") == 0.25 and ratio_of("visitor/b-model") == 0.5


def test_a_second_export_replaces_the_sessions_first(space, work):
    c = visitor(space)
    ready(c, 0.25)
    ok(export(c)[0])
    ok(c.predict("frequency", 0.5, False, "all categories", api_name="/prune")[0])
    status = export(c)[0]
    ok(status)
    assert "replaces this session's earlier export" in status    # said, not silent
    exports = [p.name for p in (session_folder(work, c) / "exports").iterdir()]
    assert len(exports) == 1 and "-frequency-50-" in exports[0] and "reap-frequency" not in exports[0], exports   # bounded: one per session
    zips = list((session_folder(work, c) / "zip").iterdir())
    assert len(zips) == 1 and "-frequency-50-" in zips[0].name


# --- 3: tokens ----------------------------------------------------------------------------

def test_anonymous_push_never_uses_the_servers_token(space, hub):
    c = visitor(space, signed_in=False)
    ready(c)
    ok(export(c)[0])
    before = len(hub.requests)
    warning(c.predict("visitor/stolen", False, api_name="/push"), "sign in")
    assert len(hub.requests) == before, "the Hub was contacted without the visitor's token"
    assert "visitor/stolen" not in hub.repos


def test_push_before_export_names_the_missing_step(space):
    c = visitor(space, signed_in=True)
    ready(c)
    warning(c.predict("visitor/x", True, api_name="/push"), "export first")


# --- 2: server files ----------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_hub_dataset_box_reads_no_server_file(space, tmp_path, suffix):
    secret = tmp_path / f"secrets{suffix}"
    secret.write_text('{"text": "db_password = hunter2"}' if suffix == ".jsonl" else "db_password = hunter2")
    missing = tmp_path / f"missing{suffix}"
    c = visitor(space)
    c.predict(BUNDLED, api_name="/load_model")
    messages = []
    for spec in (str(secret), str(missing)):
        status, stats_file = c.predict([], 2, spec, None, 64, api_name="/calibrate")
        warning(status, NO_PATHS)
        assert "hunter2" not in status
        messages.append(status.replace(spec, "<path>"))
    assert messages[0] == messages[1], "an existing and a missing file must look the same (no probing)"


def test_model_field_takes_hub_ids_and_the_bundled_model_only(space, tiny_dir, tmp_path):
    c = visitor(space)
    messages = []
    for path in (str(tiny_dir), str(tmp_path / "nothing-here")):
        card = c.predict(path, api_name="/load_model")[0]
        warning(card, NO_PATHS)
        messages.append(card.replace(path, "<path>"))
    assert messages[0] == messages[1]
    # a relative path shaped like a Hub id is a Hub id here, never the folder of that name on disk
    card = c.predict("assets/toy-gemma4-moe", api_name="/load_model")[0]
    warning(card)
    assert "Experts per layer" not in card
    assert "Experts per layer" in c.predict(BUNDLED, api_name="/load_model")[0]


def raw_call(space, api_name: str, data: list) -> str:
    """POST to gradio's HTTP API directly: gradio_client would upload a local path itself, which is
    a real upload; a hostile visitor sends the server path as it is."""
    body = json.dumps({"data": data}).encode()
    req = urllib.request.Request(f"{space.url}gradio_api/call/{api_name}", data=body,
                                 headers={"Content-Type": "application/json"})
    event_id = json.loads(urllib.request.urlopen(req, timeout=30).read())["event_id"]
    return urllib.request.urlopen(f"{space.url}gradio_api/call/{api_name}/{event_id}", timeout=60).read().decode()


def test_file_inputs_cannot_name_a_server_file(space, tmp_path):
    secret = tmp_path / "secrets.txt"
    secret.write_text("db_password = hunter2")
    stats = tmp_path / "reap-stats.npz"
    stats.write_bytes(b"PK not really")
    as_file = lambda p: {"path": str(p), "meta": {"_type": "gradio.FileData"}}  # noqa: E731
    answer = raw_call(space, "upload_stats", [as_file(stats)])
    assert answer.startswith("event: error") and "hunter2" not in answer, answer
    answer = raw_call(space, "calibrate", [[], 2, "", as_file(secret), 64])
    assert answer.startswith("event: error") and "hunter2" not in answer, answer
    c = visitor(space)
    assert "Experts per layer" in c.predict(BUNDLED, api_name="/load_model")[0]   # the app still works


# --- 7: limits ----------------------------------------------------------------------------

def test_uploads_over_the_limit_are_refused(space, tmp_path):
    """The server refuses the bytes (gradio_client also checks before sending, a hostile client not)."""
    import httpx

    big = tmp_path / "big.txt"
    with open(big, "wb") as f:
        f.write(b"a" * (21 * 10**6))                  # one 21 MB block; the public limit is 20 MB
    with open(big, "rb") as f:
        answer = httpx.post(f"{space.url}gradio_api/upload", files=[("files", ("big.txt", f))], timeout=60)
    assert answer.status_code == 413 and "File size exceeded maximum allowed size" in answer.text, answer.text
    c = visitor(space)
    c.predict(BUNDLED, api_name="/load_model")
    ok(c.predict(["toy-math"], 2, "", None, 64, api_name="/calibrate")[0])   # and the app still works


def test_long_prompt_is_refused_with_a_message(space):
    c = visitor(space)
    ready(c)
    orig, pruned, status, prompt = c.predict("x " * 50_000, None, [], [], 0.0, 0.95, 16, False, api_name="/chat")
    warning(status, "limit")
    assert orig == [] and pruned == []


# --- 8: temporary files -------------------------------------------------------------------

def test_a_closed_session_leaves_no_files(space, work):
    c = visitor(space)
    ready(c)
    ok(export(c)[0])
    folder = session_folder(work, c)
    assert (folder / "stats").is_dir() and (folder / "exports").is_dir() and (folder / "zip").is_dir()
    c.close()                                       # like closing the browser tab: the heartbeat ends
    deadline = time.time() + 30
    while folder.exists() and time.time() < deadline:
        time.sleep(0.2)
    assert not folder.exists(), "the session's statistics, export and zip outlived the session"


def test_one_visitors_long_calibration_does_not_block_anothers_short_actions(space):
    busy, other = visitor(space), visitor(space)
    busy.predict(BUNDLED, api_name="/load_model")
    job = busy.submit(["toy-math", "toy-code", "toy-tools", "toy-facts", "toy-translation"], 64, "", None, 512,
                      api_name="/calibrate")
    time.sleep(1.5)
    if job.done():
        pytest.skip("the calibration finished before the other visitor acted")
    card = other.predict(BUNDLED, api_name="/load_model")[0]       # a cached model: a short action
    still_running = not job.done()
    busy.predict(api_name="/cancel")
    status, _ = job.result(timeout=120)
    assert "Experts per layer" in card
    assert still_running, "loading waited for another visitor's whole calibration"
    warning(status, "cancelled")
