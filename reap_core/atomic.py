"""Write a folder atomically: build it under a temporary sibling, then swap it in by renames.

An interrupted or failed write leaves nothing under the final name and never touches an earlier
folder there; a successful one replaces the earlier folder with two renames (the old one is
moved aside first, so at no moment is a half-written folder visible under the final name).
The sibling lives in the same parent, so the renames stay on one filesystem.

What it replaces is only ever an earlier folder of ours: an existing file, or a non-empty folder
without the `marker` file our writers put in every folder they make, is refused with an
OutputError before anything is written or removed (`.` would otherwise replace a whole checkout).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import OutputError


def partial_path(out_dir: Path) -> Path:
    return out_dir.with_name(f".{out_dir.name}.partial")


def probe_writable(folder: Path) -> None:
    """Create `folder` if needed and write + remove a file in it: the only check that holds for
    every reason a write can fail (permissions, read-only mounts, root squash, a full quota);
    os.access says yes to root everywhere. OutputError says why not."""
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"'{existing}' is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".reap-write-check-")
        os.close(fd)
        os.remove(probe)
    except OSError as exc:
        raise OutputError(f"{exc.strerror or exc} ({exc.filename or folder})") from None


def check_output_folder(out_dir: str | Path, marker: str) -> Path:
    """The absolute folder to write, or OutputError if writing there would destroy something that
    is not ours. Call it before long work, so a bad path fails in a second, not after an hour."""
    text = str(out_dir).strip()
    if not text:
        raise OutputError("no output folder given")
    out_dir = Path(text).expanduser().absolute()
    if out_dir.exists() or out_dir.is_symlink():
        if out_dir.is_symlink() or not out_dir.is_dir():
            raise OutputError(f"'{out_dir}' exists and is not a folder: choose a new folder name")
        if any(out_dir.iterdir()) and not (out_dir / marker).is_file():
            raise OutputError(f"'{out_dir}' is a folder that is not empty and was not written by REAP Studio "
                              f"(no {marker}): it is never replaced; choose a new or empty folder")
    try:
        probe_writable(out_dir.parent)   # the folder is built beside its final name, then renamed
    except OutputError as exc:
        raise OutputError(f"cannot write '{out_dir}': {exc}") from None
    return out_dir


@contextmanager
def atomic_folder(out_dir: str | Path, marker: str) -> Iterator[Path]:
    """Yield an empty temporary folder; on a clean exit it becomes `out_dir`, else it is removed.
    The writer must put `marker` into the folder (it is how a later write knows the folder is ours)."""
    out_dir = check_output_folder(out_dir, marker)
    tmp = partial_path(out_dir)
    old = out_dir.with_name(f".{out_dir.name}.old")
    for leftover in (tmp, old):          # from a process killed mid-write: never user data
        if leftover.exists():
            shutil.rmtree(leftover)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if not (tmp / marker).is_file():
            raise RuntimeError(f"atomic_folder: the writer did not create {marker}")  # a bug, not a user error
        if out_dir.exists():
            out_dir.rename(old)
        tmp.rename(out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if old.exists():
            if not out_dir.exists():     # the second rename failed: put the earlier folder back
                old.rename(out_dir)
            else:
                shutil.rmtree(old, ignore_errors=True)
