"""Public/local mode, the app's own folders, and output folders that are never someone else's."""

from __future__ import annotations

import os
import time

import pytest

from reap_core.atomic import atomic_folder, check_output_folder
from reap_core.errors import OutputError
from reap_core.workspace import Workspace, detect_mode, session_tag

MARK = "reap_plan.json"


@pytest.mark.parametrize("env, server, public", [
    ({}, "127.0.0.1", False),
    ({}, "localhost", False),
    ({}, "0.0.0.0", True),                         # listening beyond this machine
    ({}, "192.168.1.20", True),
    ({"SPACE_ID": "someone/reap"}, "127.0.0.1", True),
    ({"REAP_STUDIO_PUBLIC": "1"}, "127.0.0.1", True),
    ({"REAP_STUDIO_PUBLIC": "0"}, "127.0.0.1", False),
    ({"GRADIO_SERVER_NAME": "0.0.0.0"}, None, True),   # how Spaces and containers start the app
])
def test_public_mode_is_decided_once(env, server, public):
    mode = detect_mode(env, server)
    assert mode.public is public
    assert ("Public mode" in mode.footer()) is public and mode.reason in mode.footer()


def test_session_folders_are_separate_and_named_without_the_session_id(tmp_path):
    ws = Workspace(tmp_path / "work")
    ws.clean_start()
    a, b = ws.session_dir("session-a"), ws.session_dir("session-b")
    assert a != b and a.parent == b.parent == tmp_path / "work" / "sessions"
    assert "session-a" not in str(a)
    target = ws.export_dir("session-a", "org/My Model!", "reap", 0.25)
    assert target.is_relative_to(a) and target.name.startswith("My-Model-reap-25-")
    assert ws.owns("session-a", target) and not ws.owns("session-b", target)
    assert not ws.owns("session-a", tmp_path / "elsewhere")
    assert not ws.owns("session-a", a / ".." / session_tag("session-b"))   # no escaping with ..


def test_scratch_dir_holds_one_file_at_a_time(tmp_path):
    ws = Workspace(tmp_path)
    first = ws.scratch_dir("s", "stats") / "one.npz"
    first.write_bytes(b"x")
    second = ws.scratch_dir("s", "stats")
    assert not first.exists() and list(second.iterdir()) == []


def test_clean_start_and_session_end_remove_only_session_files(tmp_path):
    keep = tmp_path / "work" / "user-notes.txt"        # the root itself is not ours to empty
    ws = Workspace(tmp_path / "work")
    ws.session_dir("old") .joinpath("stale.zip").write_bytes(b"z" * 10)
    keep.write_text("mine")
    ws.clean_start()
    assert list(ws.sessions.iterdir()) == [] and keep.read_text() == "mine"
    ws.session_dir("s").joinpath("f").write_text("x")
    ws.remove_session("s")
    assert list(ws.sessions.iterdir()) == []


def test_sweep_removes_idle_then_oldest_over_budget(tmp_path):
    ws = Workspace(tmp_path, max_idle_seconds=3600, max_total_bytes=2500)
    now = time.time()
    for i, name in enumerate(["idle", "old", "mid", "new"]):
        d = ws.session_dir(name)
        (d / "blob").write_bytes(b"b" * 1000)
        age = {"idle": 7200, "old": 300, "mid": 200, "new": 100}[name]
        for p in (d / "blob", d):
            os.utime(p, (now - age, now - age))
    removed = ws.sweep(keep="old")
    # idle goes for its age; then 3000 B > 2500 B: the oldest not kept ('mid') goes, 'old' is kept
    assert set(removed) == {session_tag("idle"), session_tag("mid")}
    assert {p.name for p in ws.sessions.iterdir()} == {session_tag("old"), session_tag("new")}


# --- output folders ------------------------------------------------------------------------

def test_output_folder_refuses_what_is_not_ours(tmp_path):
    precious = tmp_path / "project"
    precious.mkdir()
    (precious / "main.py").write_text("print('mine')")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    with pytest.raises(OutputError, match="not empty and was not written by REAP Studio"):
        check_output_folder(precious, MARK)
    with pytest.raises(OutputError, match="exists and is not a folder"):
        check_output_folder(a_file, MARK)
    with pytest.raises(OutputError, match="exists and is not a folder"):
        check_output_folder("/dev/null", MARK)
    with pytest.raises(OutputError, match="no output folder"):
        check_output_folder("  ", MARK)
    with pytest.raises(OutputError, match="not empty"):
        with atomic_folder(precious, marker=MARK) as tmp:
            (tmp / MARK).write_text("{}")
    assert (precious / "main.py").read_text() == "print('mine')" and a_file.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "project"]   # no sibling left behind


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_output_folder_unwritable_parent(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="not a writable folder"):
            check_output_folder(ro / "out", MARK)
    finally:
        ro.chmod(0o700)


def test_output_folder_replaces_an_earlier_export_and_fills_an_empty_one(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with atomic_folder(empty, marker=MARK) as tmp:
        (tmp / MARK).write_text("1")
    with atomic_folder(empty, marker=MARK) as tmp:       # now it is ours: replaced
        (tmp / MARK).write_text("2")
    assert (empty / MARK).read_text() == "2" and len(list(empty.iterdir())) == 1
    nested = tmp_path / "a" / "b" / "c"                  # missing parents are created
    with atomic_folder(nested, marker=MARK) as tmp:
        (tmp / MARK).write_text("3")
    assert (nested / MARK).read_text() == "3"
