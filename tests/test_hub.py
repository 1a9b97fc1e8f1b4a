"""Push (reap_core.hub) against the fake Hub on 127.0.0.1 (tests/fake_hub.py, no real network): the
messages a user sees for what they can fix, and tracebacks, not messages, for what they cannot.

The folder pushed here is a small stand-in for an export (config.json, a card, one file big enough
to go through LFS): what the push does depends on files, not on what the weights mean. The push of
a real export, byte for byte, is in test_export.py."""

import errno

import huggingface_hub
import pytest

from reap_core.hub import PushError, push_folder, validate_repo_id

from fake_hub import FakeHub, allow_local_hub

TOKEN = "hf_TestTokenThatMustNeverLeak123"
SERVER_TOKEN = "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9"
RULES = ("use 'name' or 'user/name', each part 1-96 letters, digits, '-', '_' or '.', not starting or ending "
         "with '-' or '.', with no '--' or '..' and no final '.git'")
NOT_LOGGED_IN = ("not logged in to the Hugging Face Hub, or the token is invalid or expired: log in again (on a "
                 "Space: the Sign in button; locally: `hf auth login` or HF_TOKEN)")


@pytest.fixture
def hub_env(monkeypatch):
    allow_local_hub(monkeypatch)


@pytest.fixture
def folder(tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    (out / "config.json").write_text('{"model_type": "gemma4"}\n')
    (out / "README.md").write_text("---\nlicense: apache-2.0\n---\n# pruned\n")
    (out / "model.safetensors").write_bytes(bytes(range(256)) * 200)        # 51 kB: an LFS file
    return out


def _files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


# --- names ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, shown", [("a/b/c", "a/b/c"), ("user/bad name", "user/bad name"), ("user/-x", "user/-x"),
                                         ("user/x..y", "user/x..y"), ("user/x--y", "user/x--y"),
                                         ("user/x.git", "user/x.git"), ("user/x.", "user/x."), ("ü/x", "ü/x"),
                                         ("user/" + "x" * 97, "user/" + "x" * 97), (" /a/b/c/ ", "a/b/c")])
def test_invalid_repo_names(name, shown):
    with pytest.raises(PushError) as err:
        validate_repo_id(name)
    assert str(err.value) == f"invalid repository name '{shown}': {RULES}"


def test_empty_repo_name():
    for name in ("", "  ", "/", None):
        with pytest.raises(PushError) as err:
            validate_repo_id(name)
        assert str(err.value) == "invalid repository name '': the name is empty"


def test_valid_repo_names():
    assert validate_repo_id(" me/gemma-4-26b-a4b-it-REAP-0.2 ") == "me/gemma-4-26b-a4b-it-REAP-0.2"
    assert validate_repo_id("just-a-name") == "just-a-name"
    assert validate_repo_id("/me/x/") == "me/x"
    assert validate_repo_id("me/" + "x" * 96) == "me/" + "x" * 96


# --- pushes -----------------------------------------------------------------------------------

def test_push_errors_are_clear(folder, hub_env, monkeypatch):
    with FakeHub(token=TOKEN) as hub:
        with pytest.raises(PushError) as err:
            push_folder(folder, "tester/x", token="hf_wrong", endpoint=hub.endpoint)
        assert str(err.value) == NOT_LOGGED_IN
        hub.fail_with["/api/repos/create"] = 403
        with pytest.raises(PushError) as err:
            push_folder(folder, "tester/x", token=TOKEN, endpoint=hub.endpoint)
        assert str(err.value) == ("no write permission for 'tester/x': use a token with write access to that "
                                  "namespace (a fine-grained token needs 'write' on it)")
        hub.fail_with = {"/api/models/tester/y/preupload": 403}
        with pytest.raises(PushError, match="^no write permission for 'tester/y': "):
            push_folder(folder, "tester/y", token=TOKEN, endpoint=hub.endpoint)
        assert hub.repos["tester/y"] == {}
        hub.fail_with = {"/api/repos/create": 404}
        with pytest.raises(PushError) as err:
            push_folder(folder, "tester/z", token=TOKEN, endpoint=hub.endpoint)
        assert str(err.value) == "'tester/z' was not found and could not be created (check the namespace)"
    with FakeHub(token=TOKEN, role="read") as hub:
        with pytest.raises(PushError) as err:
            push_folder(folder, "tester/x", token=TOKEN, endpoint=hub.endpoint)
        assert str(err.value) == "this token is read-only: pushing needs a token with write access"
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    with pytest.raises(PushError) as err:
        push_folder(folder, "tester/x", token=None, endpoint="http://127.0.0.1:9")
    assert str(err.value) == ("not logged in to the Hugging Face Hub: sign in (on a Space) or run `hf auth login` "
                              "(locally), then push again")
    with pytest.raises(PushError) as err:
        push_folder(folder, "tester/x", token=TOKEN, endpoint="http://127.0.0.1:9")   # nothing listens there
    assert str(err.value) == ("could not reach the Hugging Face Hub (ConnectError): check the network and try "
                              "again; files already uploaded are kept and skipped next time")
    with pytest.raises(PushError) as err:
        push_folder(folder / "missing", "tester/x", token=TOKEN)
    assert str(err.value) == f"'{folder / 'missing'}' is not an exported model folder (no config.json): export first"


def test_a_failed_lfs_upload_is_explained_by_its_cause(folder, hub_env):
    """huggingface_hub wraps a failed LFS PUT in RuntimeError('Error while uploading ...'): the message
    comes from the HTTP status underneath, and nothing is committed."""
    with FakeHub(token=TOKEN) as hub:
        hub.fail_with["/lfs-upload/"] = 422          # a 5xx would be retried by huggingface_hub for ~30 s
        with pytest.raises(PushError) as err:
            push_folder(folder, "tester/x", token=TOKEN, endpoint=hub.endpoint)
        assert str(err.value).startswith("the Hub refused the upload to 'tester/x' (HTTP 422): ")
        assert TOKEN not in str(err.value)
        assert hub.commits == [] and hub.repos["tester/x"] == {}


@pytest.mark.parametrize("raised", [MemoryError(), TypeError("upload_folder() got an unexpected keyword"),
                                    RuntimeError("a bug somewhere"), ValueError("Invalid repo type")])
def test_out_of_memory_and_bugs_are_not_reported_as_push_errors(folder, hub_env, monkeypatch, raised):
    """Before: any exception became "upload to ... failed: ...", so a bug read like a network problem."""
    def upload_folder(self, **kwargs):
        raise raised

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    with FakeHub(token=TOKEN) as hub:
        with pytest.raises(type(raised)) as err:
            push_folder(folder, "tester/x", token=TOKEN, endpoint=hub.endpoint)
        assert err.value is raised


def test_a_file_that_went_away_mid_upload_is_named(folder, hub_env, monkeypatch):
    missing = str(folder / "model.safetensors")

    def upload_folder(self, **kwargs):
        raise RuntimeError("Error while uploading 'model.safetensors' to the Hub.") from \
            FileNotFoundError(errno.ENOENT, "No such file or directory", missing)

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    with FakeHub(token=TOKEN) as hub:
        with pytest.raises(PushError) as err:
            push_folder(folder, "tester/x", token=TOKEN, endpoint=hub.endpoint)
    assert str(err.value) == (f"could not read '{missing}' of the export folder (No such file or directory): "
                              f"export again, then push")


def test_a_folder_of_any_size_is_one_upload_folder_call(folder, hub_env, monkeypatch):
    """No large-folder branch: huggingface_hub 2.x has no upload_large_folder (its upload_folder commits
    large folders in batches with hf_xet), so every folder goes through upload_folder, with our message;
    the resume records of a huggingface_hub run (.cache/) are never uploaded."""
    if not huggingface_hub.__version__.startswith("1."):
        assert not hasattr(huggingface_hub.HfApi, "upload_large_folder")
    expected = _files(folder)
    (folder / ".cache" / "huggingface").mkdir(parents=True)
    (folder / ".cache" / "huggingface" / "upload.lock").write_text("x")
    calls = []
    real = huggingface_hub.HfApi.upload_folder
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder",
                        lambda self, **kw: calls.append(kw["repo_id"]) or real(self, **kw))
    with FakeHub(token=TOKEN) as hub:
        push_folder(folder, "tester/x", token=TOKEN, endpoint=hub.endpoint, commit_message="the message")
        assert hub.repos["tester/x"] == expected
        assert [c["summary"] for c in hub.commits] == ["the message"]
    assert calls == ["tester/x"]


def test_public_push_never_uses_the_servers_token(folder, hub_env, monkeypatch):
    """Public mode (allow_saved_token=False) on a Space whose HF_TOKEN secret is set: a visitor who is
    not signed in is refused before any request; a signed-in one pushes with their own token only."""
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
        assert hub.repos["tester/y"] == _files(folder)
        assert set(hub.authorizations) - {None} == {f"Bearer {TOKEN}"}     # None: the pre-signed LFS PUTs


def test_private_push_onto_an_existing_public_repo_is_refused(folder, hub_env):
    """create_repo(private=True, exist_ok=True) leaves an existing public repo public: uploading would
    publish what the user meant to keep private, under a "Pushed" message."""
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
