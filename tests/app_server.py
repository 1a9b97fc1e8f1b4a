"""Start `python app.py` as a subprocess on a free 127.0.0.1 port, wait until it serves, stop it.

Used by the end-to-end tests (gradio_client, Playwright) and by benchmarks/app_latency.py, so
every one of them tests the app exactly as a user starts it, not an in-process copy.

    with running_app() as url:      # "http://127.0.0.1:PORT/"
        ...
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class AppProcess:
    url: str
    proc: subprocess.Popen
    log_path: Path
    startup_seconds: float   # Popen -> first HTTP 200 on /
    cwd: Path = ROOT         # the app's working folder
    temp_home: Path | None = None   # the HOME made for it, removed with it

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def _http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def start_app(timeout: float = 120.0, env: dict | None = None, cwd: Path | None = None) -> AppProcess:
    """Popen `python app.py` and block until / answers 200 (RuntimeError with the log if it dies).
    `cwd`: the folder the app runs in (what "." means to it); default the checkout."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    # HOME is a fresh temporary folder: whatever the app does with "~" (a regression once exported
    # into it, replacing the real home folder) stays inside temp
    home = tempfile.mkdtemp(prefix="reap-app-home-")
    full_env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
                "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1", "HOME": home, **(env or {})}
    log_fd, log_name = tempfile.mkstemp(prefix="reap-app-", suffix=".log")
    log_path = Path(log_name)
    t0 = time.perf_counter()
    # own process group: stopping it also stops anything app.py started, and nothing else
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=cwd or ROOT, env=full_env, stdout=log_fd,
                            stderr=subprocess.STDOUT, start_new_session=True)
    os.close(log_fd)
    app = AppProcess(url, proc, log_path, 0.0, cwd or ROOT, Path(home))
    deadline = t0 + timeout
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"app.py exited with code {proc.returncode} before serving:\n{app.log_tail()}")
        if _http_ok(url):
            app.startup_seconds = time.perf_counter() - t0
            return app
        time.sleep(0.1)
    stop_app(app)
    raise RuntimeError(f"app.py did not answer on {url} within {timeout:.0f} s:\n{app.log_tail()}")


def stop_app(app: AppProcess, grace: float = 10.0) -> None:
    """SIGTERM the app's process group (only the group we started), SIGKILL if it lingers."""
    if app.proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(app.proc.pid, signal.SIGTERM)
        try:
            app.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(app.proc.pid, signal.SIGKILL)
            app.proc.wait(timeout=grace)
    with contextlib.suppress(OSError):
        app.log_path.unlink()
    if app.temp_home is not None:
        shutil.rmtree(app.temp_home, ignore_errors=True)


@contextlib.contextmanager
def running_app(timeout: float = 120.0, env: dict | None = None, cwd: Path | None = None) -> Iterator[AppProcess]:
    app = start_app(timeout=timeout, env=env, cwd=cwd)
    try:
        yield app
    finally:
        stop_app(app)


if __name__ == "__main__":  # manual use: python tests/app_server.py  (Ctrl-C to stop)
    with running_app() as a:
        print(f"ready in {a.startup_seconds:.1f} s at {a.url} (pid {a.proc.pid}, log {a.log_path})", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            a.proc.wait()
