"""Stage 8 — push: an exported folder in, a Hub model repository (its URL) out.

The token is the user's OAuth token on a Space (the app passes it), or the one saved by
`hf auth login` / HF_TOKEN locally (huggingface_hub.get_token()). In public mode
(allow_saved_token=False) only the token passed in is ever used: a visitor who is not signed in
must never push as the server's owner. It is passed to huggingface_hub and nowhere else: never
printed, logged, or written to a file, and scrubbed from any message.

Steps: validate the name, check the token (whoami: one request, fails in a second instead of
after hashing 40 GB), create the repo or reuse it, check that a repo meant to be private is
(create_repo ignores `private` for an existing repo), upload. huggingface_hub's upload_folder is,
with hf_xet installed (huggingface_hub >= 2), a resumable pipelined upload that commits a large
folder in batches and skips what already arrived; without hf_xet it is one commit over the
legacy LFS protocol. On huggingface_hub 1.x, large folders go through upload_large_folder
(resumable), small ones through upload_folder (one commit). Every failure a user can cause is a
PushError with one clear sentence.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Callable

from .errors import ReapError

Progress = Callable[[float, str], None]
LARGE_FOLDER_BYTES = 5 * 10**9       # above this, prefer the resumable multi-commit upload
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


class PushError(ReapError):
    """Publishing to the Hub failed for a reason the user can fix (login, permission, name, network)."""


def validate_repo_id(repo_id: str) -> str:
    """'user/name' (or just 'name', completed later with the account name) -> the cleaned id."""
    repo_id = (repo_id or "").strip().strip("/")
    parts = repo_id.split("/")
    problem = None
    if not repo_id:
        problem = "the repository name is empty"
    elif len(parts) > 2:
        problem = "use the form 'user/name' (one slash)"
    elif not all(_NAME.match(p) for p in parts):
        problem = "use letters, digits, '-', '_' and '.', starting with a letter or digit, at most 96 characters"
    elif any(".." in p or "--" in p or p.endswith((".", ".git")) for p in parts):
        problem = "'..', '--' and a trailing '.' or '.git' are not allowed"
    if problem:
        raise PushError(f"invalid repository name '{repo_id}': {problem}")
    return repo_id


def _scrub(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


def _explain(exc: Exception, repo_id: str, token: str | None) -> PushError:
    """One sentence for the user, from huggingface_hub's and httpx's many exception types."""
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, OfflineModeIsEnabled

    if isinstance(exc, PushError):
        return exc
    if isinstance(exc, OfflineModeIsEnabled):
        return PushError("offline mode is on (HF_HUB_OFFLINE=1): unset it to push to the Hub")
    status = getattr(getattr(exc, "response", None), "status_code", None)
    first = _scrub(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, token)
    if isinstance(exc, HFValidationError):
        return PushError(f"invalid repository name '{repo_id}': {first}")
    if status == 401:
        return PushError("not logged in to the Hugging Face Hub, or the token is invalid or expired: log in again "
                         "(on a Space: the Sign in button; locally: `hf auth login` or HF_TOKEN)")
    if status == 403:
        return PushError(f"no write permission for '{repo_id}': use a token with write access to that "
                         f"namespace (a fine-grained token needs 'write' on it)")
    if status == 404:
        return PushError(f"'{repo_id}' was not found and could not be created (check the namespace)")
    if status is not None and isinstance(exc, HfHubHTTPError):
        return PushError(f"the Hub refused the upload to '{repo_id}' (HTTP {status}): {first}")
    if isinstance(exc, (OSError, TimeoutError)) or type(exc).__module__.startswith(("httpx", "httpcore", "requests")):
        return PushError(f"could not reach the Hugging Face Hub ({type(exc).__name__}): check the network "
                         f"and try again; files already uploaded are kept and skipped next time")
    return PushError(f"upload to '{repo_id}' failed: {type(exc).__name__}: {first}")


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _push_token(token: str | None, allow_saved_token: bool) -> str:
    """The token to push with. Public mode: only the visitor's own (HfApi(token=None) and
    get_token() would fall back to the server's HF_TOKEN or saved login, i.e. push as the owner)."""
    if token:
        return token
    if not allow_saved_token:
        raise PushError("not signed in: sign in with the Sign in button to push (this server never pushes "
                        "with its own token)")
    from huggingface_hub import get_token

    saved = get_token()
    if not saved:
        raise PushError("not logged in to the Hugging Face Hub: sign in (on a Space) or run `hf auth login` "
                        "(locally), then push again")
    return saved


def _check_visibility(api, repo_id: str, private: bool, token: str) -> None:
    """Asked for private, got public: create_repo(exist_ok=True) leaves an existing repo as it is,
    so uploading would publish what the user meant to keep private. Refuse before any upload."""
    if not private:
        return
    info = api.repo_info(repo_id, repo_type="model", token=token)
    if info.private is not True:
        raise PushError(f"'{repo_id}' already exists and is public; the Private box does not change an existing "
                        f"repo — make it private on the Hub, or untick Private")


def push_folder(folder: str | Path, repo_id: str, token: str | None, private: bool = False,
                progress: Progress | None = None, endpoint: str | None = None,
                commit_message: str | None = None, allow_saved_token: bool = True) -> str:
    """Upload `folder` to the model repo `repo_id` (created if missing, reused if it exists).
    Returns the repo URL. PushError for a missing login, missing permission, bad name, network,
    or a public repo where a private one was asked for.

    allow_saved_token=False (public mode): `token` must be the visitor's own; without it the push is
    refused, and neither the saved login nor HF_TOKEN is ever read."""
    from huggingface_hub import HfApi

    report = progress or (lambda fraction, message: None)
    folder = Path(folder).expanduser()
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise PushError(f"'{folder}' is not an exported model folder (no config.json): export first")
    repo_id = validate_repo_id(repo_id)
    token = _push_token(token, allow_saved_token)
    api = HfApi(endpoint=endpoint, token=token)
    try:
        report(0.0, "checking the login")
        me = api.whoami()
        role = ((me.get("auth") or {}).get("accessToken") or {}).get("role")
        if role == "read":
            raise PushError("this token is read-only: pushing needs a token with write access")
        if "/" not in repo_id:
            repo_id = f"{me['name']}/{repo_id}"
        report(0.05, f"creating or reusing {repo_id}")
        url = str(api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model"))
        _check_visibility(api, repo_id, private, token)
        size = _folder_bytes(folder)
        report(0.1, f"uploading {sum(1 for p in folder.rglob('*') if p.is_file())} files ({size / 1e9:.2f} GB)")
        message = commit_message or f"Upload pruned model from REAP Studio ({folder.name})"
        if size > LARGE_FOLDER_BYTES and hasattr(api, "upload_large_folder"):
            cache = folder / ".cache" / "huggingface"       # upload_large_folder's resume records
            had_cache = cache.exists()
            api.upload_large_folder(repo_id=repo_id, folder_path=folder, repo_type="model", private=private)
            if not had_cache:
                shutil.rmtree(cache, ignore_errors=True)
                if (folder / ".cache").is_dir() and not any((folder / ".cache").iterdir()):
                    (folder / ".cache").rmdir()
        else:
            api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type="model", commit_message=message,
                              ignore_patterns=[".cache/**", ".*.partial/**"])
    except Exception as exc:
        raise _explain(exc, repo_id, token) from None
    report(1.0, f"pushed to {url}")
    return url
