"""Stage 8 — push: an exported folder in, a Hub model repository (its URL) out.

The token is the user's OAuth token on a Space (the app passes it), or the one saved by
`hf auth login` / HF_TOKEN locally (huggingface_hub.get_token()). In public mode
(allow_saved_token=False) only the token passed in is ever used: a visitor who is not signed in
must never push as the server's owner. It is passed to huggingface_hub and nowhere else: never
printed, logged, or written to a file, and scrubbed from any message.

Steps: validate the name (huggingface_hub's own rules), check the token (whoami: one request,
fails in a second instead of after hashing 40 GB), create the repo or reuse it, check that a repo
meant to be private is (create_repo ignores `private` for an existing repo), upload with
`upload_folder`. With hf_xet installed (a dependency of huggingface_hub 2.x on x86-64 and arm64)
that is a pipelined upload that commits a large folder in batches and, run again after an
interruption, skips what already arrived; without hf_xet it is one commit over the LFS protocol.
There is no separate large-folder path: huggingface_hub 2.x has no `upload_large_folder` (its
`upload_folder` took over that job), and on 1.x the single-commit `upload_folder` handles a
model-sized folder too (only its resume is coarser).

Errors: a failure a user can cause or fix (login, permission, name, network, a file that went
away) is a PushError with one sentence; anything else (out of memory, a bug) is left alone to be
a traceback, never reported as "upload failed".
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

from .errors import ReapError

Progress = Callable[[float, str], None]
_NAME_RULES = ("use 'name' or 'user/name', each part 1-96 letters, digits, '-', '_' or '.', not starting or "
               "ending with '-' or '.', with no '--' or '..' and no final '.git'")


class PushError(ReapError):
    """Publishing to the Hub failed for a reason the user can fix (login, permission, name, network)."""


def validate_repo_id(repo_id: str) -> str:
    """'user/name' (or just 'name', completed later with the account name) -> the cleaned id.

    The rules are huggingface_hub's (utils.validate_repo_id, which every HfApi call applies); this
    only strips spaces and slashes and says what the rules are."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id as hub_validate_repo_id

    cleaned = (repo_id or "").strip().strip("/")
    if not cleaned:
        raise PushError("invalid repository name '': the name is empty")
    try:
        hub_validate_repo_id(cleaned)
    except HFValidationError:
        raise PushError(f"invalid repository name '{cleaned}': {_NAME_RULES}") from None
    if not cleaned.isascii():     # older huggingface_hub matched Unicode letters; the Hub refuses them
        raise PushError(f"invalid repository name '{cleaned}': {_NAME_RULES}")
    return cleaned


@functools.cache
def hub_failures() -> tuple[type[BaseException], ...]:
    """The exceptions that mean the Hub answered no or could not be reached, never a bug:
    HfHubHTTPError (an HTTP status), OfflineModeIsEnabled, the HTTP client's TransportError
    (connect, timeout, protocol: httpx under huggingface_hub 1.x, httpx2 under 2.x), and the
    socket-level ConnectionError and TimeoutError."""
    import importlib

    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    found: list[type[BaseException]] = [HfHubHTTPError, OfflineModeIsEnabled, ConnectionError, TimeoutError]
    for client in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(client).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(found)


def _scrub(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


def _user_cause(exc: BaseException) -> BaseException | None:
    """The exception in `exc`'s chain of causes that a user can act on, or None. The chain matters:
    huggingface_hub wraps a failed LFS upload in RuntimeError("Error while uploading ...") from the
    real cause (an HTTP status, a dropped connection)."""
    from huggingface_hub.errors import HFValidationError

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (PushError, HFValidationError) + hub_failures()):
            return seen
        if isinstance(seen, OSError) and seen.filename:      # a file of the folder could not be read
            return seen
        seen = seen.__cause__
    return None


def _explain(exc: BaseException, repo_id: str, token: str | None) -> PushError:
    """One sentence for the user, from an exception `_user_cause` accepted."""
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
    if isinstance(exc, hub_failures()):
        return PushError(f"could not reach the Hugging Face Hub ({type(exc).__name__}): check the network "
                         f"and try again; files already uploaded are kept and skipped next time")
    # the one kind left: a file of the folder that could not be read (deleted or changed mid-upload)
    return PushError(f"could not read '{exc.filename}' of the export folder ({exc.strerror or exc}): "
                     f"export again, then push")


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
        api.upload_folder(repo_id=repo_id, folder_path=folder, repo_type="model", commit_message=message,
                          ignore_patterns=[".cache/**", ".*.partial/**"])
    except Exception as exc:
        cause = _user_cause(exc)
        if cause is None:
            raise                    # out of memory, a bug: a traceback, not a made-up "upload failed"
        raise _explain(cause, repo_id, token) from None
    report(1.0, f"pushed to {url}")
    return url
