"""What the CLI checks before any work: output paths, ratios, counts, statistics against the config.

A mistake here costs the user a second, never the hour of calibration or evaluation before it; each
check raises a ReapError (one `error:` line) or, for argparse types, ArgumentTypeError.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .errors import OutputError, ReapError


def _probe_writable(folder: Path, flag: str, target: str) -> None:
    from .atomic import probe_writable

    try:
        probe_writable(folder)
    except OutputError as exc:
        raise OutputError(f"{flag} '{target}' cannot be written: {exc}") from None


def check_output_file(path: str, flag: str) -> Path:
    """The file `path` names can be written (created, or replaced if it is a file)."""
    target = Path(path).expanduser()
    if target.is_dir():
        raise OutputError(f"{flag} '{path}' is a folder: give a file name")
    _probe_writable(target.parent, flag, path)
    if target.exists() and not os.access(target, os.W_OK):
        raise OutputError(f"{flag} '{path}' exists and is read-only")
    return target


def check_output_dir(path: str, flag: str) -> Path:
    """The folder `path` names can be written, and writing it destroys nothing that is not ours
    (reap_core.atomic.check_output_folder); its parent is created if needed."""
    from .atomic import check_output_folder
    from .prune import PLAN_FILE

    try:
        return check_output_folder(path, PLAN_FILE)
    except OutputError as exc:
        raise OutputError(f"{flag} {exc}") from None


def parse_ratios(text: str, flag: str = "--sweep-ratios") -> list[float]:
    """'0,0.25,0.5' -> [0.0, 0.25, 0.5]; ReapError naming the first item that is not a ratio in [0, 1)."""
    ratios = []
    for item in text.split(","):
        try:
            ratio = float(item)
        except ValueError:
            raise ReapError(f"{flag}: '{item.strip()}' is not a number (give ratios like 0,0.25,0.5)") from None
        if not 0.0 <= ratio < 1.0:  # also refuses nan
            raise ReapError(f"{flag}: {item.strip()} is outside [0, 1) (0 = the original model)")
        ratios.append(ratio)
    return ratios


def check_stats_fit_config(stats, model: str, trust_remote_code: bool) -> None:
    """Refuse statistics made with another model from the config alone, before weights are read."""
    from .adapters import find_adapter
    from .model import load_config

    config = load_config(model, trust_remote_code=trust_remote_code)
    adapter = find_adapter(config)
    stats.check_matches(adapter.moe_layer_indices(config), adapter.num_experts(config), adapter.top_k(config))


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (0 or a negative batch size would be a traceback later)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value
