"""Where the app may read and write on the server, decided once: public or local mode, per-session folders.

Public mode (a Hugging Face Space, a server listening beyond loopback, or REAP_STUDIO_PUBLIC=1):
visitors are strangers. They name no server path at all — models are Hub ids or the bundled one,
calibration data is built in, uploaded or a Hub dataset, exports go to a folder of their own
session — and only their own OAuth token ever reaches the Hub. Local mode (the default,
`python app.py` on 127.0.0.1) is one person on their own machine: paths are allowed, and the
token saved by `hf auth login` is used.

Every file the app writes for a session (statistics downloads, export folders, zips) lives under
`<root>/sessions/<session tag>/`: removed when the session ends, swept when it has been idle too
long or the total grows too large, and the whole `sessions/` folder is emptied at start (the
sessions of a previous run are gone with it). Nothing outside `root` is ever removed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

LOOPBACK = {"127.0.0.1", "localhost", "::1", ""}
TRUTHY = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class ServerMode:
    public: bool
    reason: str      # shown in the footer: why the app is in this mode

    def footer(self) -> str:
        if self.public:
            return (f"**Public mode** ({self.reason}): no server paths, exports stay in your session's own "
                    "folder (download the zip), and pushes use only your own Hugging Face sign-in.")
        return (f"**Local mode** ({self.reason}): server paths are allowed and pushes use the token saved by "
                "`hf auth login`. Set `REAP_STUDIO_PUBLIC=1` before sharing this server.")


def detect_mode(environ: Mapping[str, str] | None = None, server_name: str | None = None) -> ServerMode:
    """Public on a Space, when listening beyond loopback, or when asked; local otherwise."""
    env = os.environ if environ is None else environ
    if env.get("SPACE_ID"):
        return ServerMode(True, f"Hugging Face Space {env['SPACE_ID']}")
    if env.get("REAP_STUDIO_PUBLIC", "").strip().lower() in TRUTHY:
        return ServerMode(True, "REAP_STUDIO_PUBLIC is set")
    name = (server_name if server_name is not None else env.get("GRADIO_SERVER_NAME", "127.0.0.1")).strip()
    if name not in LOOPBACK:
        return ServerMode(True, f"listening on {name}, beyond this machine")
    return ServerMode(False, f"listening on {name or '127.0.0.1'} only")


def session_tag(session_id: str) -> str:
    """A short, file-name-safe stand-in for a session id (the id itself never reaches a path)."""
    return hashlib.sha256((session_id or "anonymous").encode()).hexdigest()[:10]


def _tree_bytes(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        try:
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
        except OSError:
            pass
    return total


def _last_used(path: Path) -> float:
    try:
        return max([path.stat().st_mtime] + [p.stat().st_mtime for p in path.iterdir()])
    except OSError:
        return 0.0


class Workspace:
    """The app's own folder on the server; one sub-folder per browser session."""

    def __init__(self, root: str | Path, max_idle_seconds: float = 6 * 3600, max_total_bytes: int = 20 * 10**9):
        self.root = Path(root).expanduser().absolute()
        self.sessions = self.root / "sessions"
        self.max_idle_seconds = max_idle_seconds
        self.max_total_bytes = max_total_bytes
        self._lock = threading.Lock()

    def clean_start(self) -> None:
        """Empty `sessions/`: files of a previous run belong to sessions that no longer exist."""
        if self.sessions.exists():
            shutil.rmtree(self.sessions, ignore_errors=True)
        self.sessions.mkdir(parents=True, exist_ok=True)

    def session_dir(self, session_id: str) -> Path:
        path = self.sessions / session_tag(session_id)
        path.mkdir(parents=True, exist_ok=True)
        os.utime(path)  # marks the session as in use for the idle sweep
        return path

    def scratch_dir(self, session_id: str, kind: str) -> Path:
        """A fresh, empty `<session>/<kind>/` (the previous one's files are replaced): one statistics
        download or one zip per session at a time, so repeated clicks never pile files up."""
        path = self.session_dir(session_id) / kind
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def export_dir(self, session_id: str, model_id: str, criterion: str, ratio: float) -> Path:
        """`<session>/exports/<model>-<criterion>-<percent>-<tag>`: readable, and unique per session."""
        name = Path((model_id or "model").rstrip("/")).name or "model"
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in name).strip(".-") or "model"
        return (self.session_dir(session_id) / "exports" /
                f"{safe}-{criterion}-{round(ratio * 100)}-{session_tag(session_id)[:6]}")

    def owns(self, session_id: str, path: str | Path) -> bool:
        """True if `path` lies inside this session's folder (what a push may upload in public mode)."""
        try:
            Path(path).resolve().relative_to((self.sessions / session_tag(session_id)).resolve())
            return True
        except (ValueError, OSError):
            return False

    def remove_session(self, session_id: str) -> None:
        shutil.rmtree(self.sessions / session_tag(session_id), ignore_errors=True)

    def sweep(self, keep: str | None = None) -> list[str]:
        """Remove idle sessions' folders, then the oldest ones while the total is over the budget.
        `keep` (a session id) is never removed. Returns the tags removed."""
        keep_tag = session_tag(keep) if keep else None
        removed = []
        with self._lock:
            if not self.sessions.is_dir():
                return removed
            folders = sorted((p for p in self.sessions.iterdir() if p.is_dir()), key=_last_used)
            now = time.time()
            for p in list(folders):
                if p.name != keep_tag and now - _last_used(p) > self.max_idle_seconds:
                    shutil.rmtree(p, ignore_errors=True)
                    folders.remove(p)
                    removed.append(p.name)
            sizes = {p: _tree_bytes(p) for p in folders}
            total = sum(sizes.values())
            for p in folders:  # oldest first
                if total <= self.max_total_bytes:
                    break
                if p.name == keep_tag:
                    continue
                shutil.rmtree(p, ignore_errors=True)
                total -= sizes[p]
                removed.append(p.name)
        return removed
