"""Write a folder atomically: build it under a temporary sibling, then swap it in by renames.

An interrupted or failed write leaves nothing under the final name and never touches an earlier
folder there; a successful one replaces the earlier folder with two renames (the old one is
moved aside first, so at no moment is a half-written folder visible under the final name).
The sibling lives in the same parent, so the renames stay on one filesystem.
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def partial_path(out_dir: Path) -> Path:
    return out_dir.with_name(f".{out_dir.name}.partial")


@contextmanager
def atomic_folder(out_dir: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder; on a clean exit it becomes `out_dir`, else it is removed."""
    out_dir = Path(out_dir).expanduser().absolute()
    tmp = partial_path(out_dir)
    old = out_dir.with_name(f".{out_dir.name}.old")
    for leftover in (tmp, old):          # from a process killed mid-write: never user data
        if leftover.exists():
            shutil.rmtree(leftover)
    tmp.mkdir(parents=True)
    try:
        yield tmp
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
