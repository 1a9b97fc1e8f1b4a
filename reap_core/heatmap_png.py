"""A saliency heatmap as a PNG, with numpy + zlib + struct only (no plotting dependency).

Rows are MoE layers, columns experts; each cell's darkness is the expert's score relative to the
best expert of its layer (so layers with different scales read alike). Kept experts are blue,
pruned experts orange: the pruned band sits at the light end of every row by construction, and
orange cells that are dark stand out as experts pruned despite a high score (ratio too high, or
a criterion that disagrees with the one shown). plotly's static export would need Chrome.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

KEPT_RGB = np.array([33, 102, 172], dtype=np.float64)     # dark end for kept experts (blue)
PRUNED_RGB = np.array([217, 95, 2], dtype=np.float64)     # dark end for pruned experts (orange)
LIGHT = np.array([247, 247, 247], dtype=np.float64)
GRID = np.array([255, 255, 255], dtype=np.uint8)


def png_bytes(rgb: np.ndarray) -> bytes:
    """Encode an [height, width, 3] uint8 array as a PNG (8-bit RGB, no filtering)."""
    height, width, _ = rgb.shape

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = np.concatenate([np.zeros((height, 1), dtype=np.uint8), rgb.reshape(height, width * 3)], axis=1)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)   # 8 bits, truecolour
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 9))
            + chunk(b"IEND", b""))


def heatmap_rgb(scores: np.ndarray, pruned: np.ndarray, cell: tuple[int, int] | None = None) -> np.ndarray:
    """scores [L, E] float, pruned [L, E] bool -> image [L*ch, E*cw, 3] uint8 with 1-px grid lines."""
    scores = np.nan_to_num(np.asarray(scores, dtype=np.float64))
    num_layers, num_experts = scores.shape
    if cell is None:   # ~1000 px wide at most, cells no smaller than 3 px
        cw = max(3, min(16, 1000 // max(num_experts, 1)))
        cell = (max(3, min(16, 2 * cw)), cw)
    ch, cw = cell
    lo = scores.min(axis=1, keepdims=True)
    span = np.maximum(scores.max(axis=1, keepdims=True) - lo, 1e-12)
    t = ((scores - lo) / span)[..., None]                                  # 0 = worst, 1 = best in layer
    dark = np.where(np.asarray(pruned, dtype=bool)[..., None], PRUNED_RGB, KEPT_RGB)
    colours = (LIGHT * (1 - 0.85 * t) + dark * 0.85 * t).round().astype(np.uint8)   # [L, E, 3]
    image = np.repeat(np.repeat(colours, ch, axis=0), cw, axis=1)
    if ch > 2:
        image[ch - 1::ch] = GRID
    if cw > 2:
        image[:, cw - 1::cw] = GRID
    return image


def heatmap_png(scores: np.ndarray, pruned: np.ndarray) -> bytes:
    return png_bytes(heatmap_rgb(scores, pruned))
