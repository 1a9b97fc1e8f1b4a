"""Sliced safetensors shards, written a piece at a time: tensor sources in, shard files + index out.

Two sources give the same tensors: `CheckpointSource` reads the source checkpoint's safetensors
files as byte ranges (only the kept experts' rows are read), `ModelSource` slices the tensors of
a model already in memory. Both go through one layout and one writer, so the same plan gives
byte-identical files whichever path produced them.

Layout (`plan_shards` -> `ShardLayout`): huggingface_hub's shard planning, fed tensor metadata
instead of tensors (the streaming path never holds one).
Writing (`write_checkpoint`): our own, because no library writes a safetensors file a piece at a
time: safetensors' `save_file` and huggingface_hub's `save_torch_state_dict` take a dict of whole
tensors, i.e. a whole shard (GBs) in memory, and slicing on load would read every pruned row too.
The writer writes the header (computed from shapes alone), then each tensor in pieces of at most
CHUNK_BYTES along its first axis, straight to the file; from a checkpoint the pieces are byte
ranges the kernel copies (copy_file_range). Nothing ever holds a whole shard, or even a whole
expert tensor: peak memory stays flat, whatever the model size. The file layout follows
safetensors' own `save_file` (compact JSON header padded to 8 bytes, tensors ordered by element
size then name), so loaders see an ordinary safetensors file.
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from huggingface_hub.constants import SAFETENSORS_INDEX_FILE as INDEX_FILE       # the names loaders look for
from huggingface_hub.constants import SAFETENSORS_SINGLE_FILE as SINGLE_FILE
from huggingface_hub.constants import SAFETENSORS_WEIGHTS_FILE_PATTERN as WEIGHTS_PATTERN

CHUNK_BYTES = 16 * 2**20          # largest piece copied or written at once
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


@dataclass(frozen=True)
class Entry:
    """One output tensor: name, safetensors dtype, output shape, and how to slice it."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    kept: tuple[int, ...] | None = None     # expert ids kept along `axis`; None = copied unchanged
    axis: int = 0
    source: str | None = None               # the source tensor's name, when renamed (a renumbered expert)

    @property
    def source_name(self) -> str:
        return self.source or self.name

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=DTYPES[self.dtype]).element_size()

    @property
    def nbytes(self) -> int:
        n = self.itemsize
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class Selection:
    """What an export takes from the source tensors, by source name: tensors holding every expert,
    sliced along their expert axis; one-expert tensors of kept experts, renamed to their new ids
    (checkpoints that store `experts.{j}.…`); the pruned experts' own tensors, left out."""

    sliced: dict[str, tuple[int, tuple[int, ...]]]   # name -> (expert axis, kept ids)
    renamed: dict[str, str]                           # name -> output name
    dropped: frozenset[str]

    def entry(self, name: str, dtype: str, shape: tuple[int, ...]) -> Entry | None:
        """The output tensor made from source tensor `name`, or None if it is left out."""
        if name in self.dropped:
            return None
        if name in self.sliced:
            axis, kept = self.sliced[name]
            return Entry(name, dtype, shape[:axis] + (len(kept),) + shape[axis + 1:], tuple(kept), axis)
        out = self.renamed.get(name)
        return Entry(out, dtype, shape, source=name) if out and out != name else Entry(name, dtype, shape)


@dataclass(frozen=True)
class FileRange:
    """`size` bytes at `offset` of an open file: copied by the kernel, never through Python."""

    fd: int
    offset: int
    size: int


def _write_all(out, data) -> int:
    """Write every byte to an unbuffered file (a raw write may write fewer); returns the count."""
    view = memoryview(data).cast("B")
    total = view.nbytes
    while view:
        view = view[out.write(view):]
    return total


def _copy_range(piece: FileRange, out) -> None:
    """copy_file_range: the kernel moves the bytes (as fast as shutil.copyfile; a read() + write()
    through a Python buffer measured 3-4x slower on this VM). Falls back to pread + write where
    the call is missing or refused (other OS, some filesystems)."""
    offset, left = piece.offset, piece.size
    try:
        while left:
            n = os.copy_file_range(piece.fd, out.fileno(), left, offset)
            if n == 0:
                raise ValueError("source file is truncated")
            offset, left = offset + n, left - n
        return
    except (AttributeError, OSError):
        pass
    while left:
        data = os.pread(piece.fd, min(left, CHUNK_BYTES), offset)
        if not data:
            raise ValueError("source file is truncated")
        _write_all(out, data)
        offset, left = offset + len(data), left - len(data)


def natural_key(name: str) -> list:
    """'layers.10.' after 'layers.9.': the order people read, the same from every source."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _runs(ids: tuple[int, ...]) -> list[tuple[int, int]]:
    """Ascending ids -> (start, stop) ranges of consecutive ids: few large reads instead of many."""
    runs: list[tuple[int, int]] = []
    for i in ids:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def row_chunks(entry: Entry, full_rows: int, row_bytes: int) -> Iterator[tuple[int, int]]:
    """(start, stop) ranges along axis 0 of the SOURCE tensor, in output order, each <= CHUNK_BYTES."""
    step = max(1, CHUNK_BYTES // max(row_bytes, 1))
    ranges = _runs(entry.kept) if entry.kept is not None else [(0, full_rows)]
    for start, stop in ranges:
        for a in range(start, stop, step):
            yield a, min(a + step, stop)


class TensorSource:
    """Yields each output tensor as contiguous pieces (tensors or raw bytes), in output byte order."""

    entries: list[Entry]                          # the output tensors, sliced shapes
    source_shapes: dict[str, tuple[int, ...]]     # name -> shape before slicing

    def pieces(self, entry: Entry) -> Iterator[torch.Tensor]:
        raise NotImplementedError

    def close(self) -> None:
        pass


def _pieces_from(entry: Entry, full_shape: tuple[int, ...], read: Callable[[int, int], torch.Tensor],
                 whole: Callable[[], torch.Tensor]) -> Iterator[torch.Tensor]:
    """Shared slicing logic: axis-0 slices stream by row ranges; any other axis reads the tensor once."""
    if entry.kept is not None and entry.axis != 0:
        index = torch.as_tensor(entry.kept, dtype=torch.long)
        yield whole().index_select(entry.axis, index).contiguous()
        return
    if not full_shape:                       # a scalar
        yield whole().contiguous()
        return
    row_bytes = entry.nbytes // max(entry.shape[0], 1) if entry.shape[0] else 0
    for a, b in row_chunks(entry, full_shape[0], row_bytes):
        yield read(a, b).contiguous()


def read_header(path: Path) -> tuple[dict, int]:
    """A safetensors file's header (name -> dtype, shape, data_offsets) and where its data starts."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header, 8 + n


class CheckpointSource(TensorSource):
    """Tensors of a safetensors checkpoint folder (single file or sharded with an index), as byte
    ranges of its files: only the kept experts' rows are read, by the kernel. Rejected: safe_open
    (memory-mapped pages, once touched, count towards this process's memory until the file is
    unmapped: a whole shard, measured 1.08x the largest shard) and read() into a Python buffer
    (memory flat, but 3-4x slower than a copy here)."""

    def __init__(self, folder: Path, selection: Selection):
        self.folder = Path(folder)
        index = self.folder / INDEX_FILE
        files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() \
            else [SINGLE_FILE]
        self.location: dict[str, tuple[str, int]] = {}       # name -> (file, absolute offset of its data)
        self.entries = []
        self.source_shapes: dict[str, tuple[int, ...]] = {}
        for file in files:
            header, data_start = read_header(self.folder / file)
            for name, info in header.items():
                shape, dtype = tuple(info["shape"]), info["dtype"]
                self.location[name] = (file, data_start + info["data_offsets"][0])
                self.source_shapes[name] = shape
                entry = selection.entry(name, dtype, shape)
                if entry is not None:
                    self.entries.append(entry)
        self._file: tuple[str, int] | None = None       # the one source file open at a time

    def _fd(self, file: str) -> int:
        if self._file is None or self._file[0] != file:
            self.close()
            self._file = (file, os.open(self.folder / file, os.O_RDONLY))
        return self._file[1]

    def pieces(self, entry: Entry) -> Iterator[FileRange | torch.Tensor]:
        file, start = self.location[entry.source_name]
        shape = self.source_shapes[entry.source_name]
        fd = self._fd(file)
        if entry.kept is not None and entry.axis != 0:      # no known family: read once, slice in memory
            data = bytearray(os.pread(fd, Entry(entry.name, entry.dtype, shape).nbytes, start))
            t = torch.frombuffer(data, dtype=DTYPES[entry.dtype]).reshape(shape)
            yield t.index_select(entry.axis, torch.as_tensor(entry.kept, dtype=torch.long)).contiguous()
            return
        if not shape:
            yield FileRange(fd, start, entry.nbytes)
            return
        row_bytes = Entry(entry.name, entry.dtype, (1,) + shape[1:]).nbytes
        for a, b in row_chunks(entry, shape[0], row_bytes):
            yield FileRange(fd, start + a * row_bytes, (b - a) * row_bytes)

    def close(self) -> None:
        if self._file is not None:
            os.close(self._file[1])
            self._file = None


class ModelSource(TensorSource):
    """Tensors of a model in memory, under their checkpoint names (tied copies left out)."""

    def __init__(self, state: dict[str, torch.Tensor], selection: Selection):
        self.state = state
        self.source_shapes = {name: tuple(t.shape) for name, t in state.items()}
        entries = (selection.entry(name, DTYPE_NAMES[t.dtype], tuple(t.shape)) for name, t in state.items())
        self.entries = [e for e in entries if e is not None]

    def pieces(self, entry: Entry) -> Iterator[torch.Tensor]:
        t = self.state[entry.source_name].detach()      # on a GPU, each piece is copied to the CPU on its own
        yield from _pieces_from(entry, tuple(t.shape), lambda a, b: t[a:b].cpu(), lambda: t.cpu())


# --- layout and writing -----------------------------------------------------------------------

@dataclass(frozen=True)
class ShardLayout:
    """Which output tensors go to which file, and the index that says so: decided from shapes alone,
    before any byte is read or written. `files` keeps the shard order; `index` is None for one file."""

    files: dict[str, tuple[Entry, ...]]
    index: dict | None

    @property
    def names(self) -> list[str]:
        return list(self.files) + ([INDEX_FILE] if self.index is not None else [])

    @property
    def total_bytes(self) -> int:
        return sum(e.nbytes for entries in self.files.values() for e in entries)


def plan_shards(entries: list[Entry], max_shard_bytes: int) -> ShardLayout:
    """huggingface_hub's own shard planning (the one save_torch_state_dict and transformers'
    save_pretrained use: greedy in key order, a tensor above the limit alone in its shard, file
    names `model-0000i-of-0000n.safetensors`), run over tensor metadata: the storage size of an
    entry is its output byte count, so no tensor needs to exist. Keys go in natural order, so both
    sources give the same layout. No storage ids: tied copies are already left out of the entries."""
    from huggingface_hub import split_state_dict_into_shards_factory

    by_name = {e.name: e for e in sorted(entries, key=lambda e: natural_key(e.name))}
    split = split_state_dict_into_shards_factory(by_name, get_storage_size=lambda e: e.nbytes,
                                                 filename_pattern=WEIGHTS_PATTERN, max_shard_size=max_shard_bytes)
    files = {name: tuple(by_name[k] for k in keys) for name, keys in split.filename_to_tensors.items()}
    if not split.is_sharded:
        return ShardLayout(files, None)
    metadata = {"total_parameters": sum(e.nbytes // e.itemsize for e in entries), **split.metadata}
    return ShardLayout(files, {"metadata": metadata, "weight_map": dict(sorted(split.tensor_to_filename.items()))})


def _header(entries: list[Entry] | tuple[Entry, ...]) -> tuple[bytes, list[Entry]]:
    ordered = sorted(entries, key=lambda e: (-e.itemsize, e.name))   # safetensors' own order: aligned
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for e in ordered:
        header[e.name] = {"dtype": e.dtype, "shape": list(e.shape), "data_offsets": [offset, offset + e.nbytes]}
        offset += e.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw, ordered


def write_shard(path: Path, entries: list[Entry] | tuple[Entry, ...], source: TensorSource,
                on_bytes: Callable[[int], None] | None = None) -> int:
    """Write one safetensors file, piece by piece. Returns the bytes of tensor data written."""
    head, ordered = _header(entries)
    written = 0
    with open(path, "wb", buffering=0) as f:     # unbuffered: copy_file_range writes at the fd's position
        _write_all(f, head)
        for e in ordered:
            n = 0
            for piece in source.pieces(e):
                if isinstance(piece, FileRange):
                    _copy_range(piece, f)
                    size = piece.size
                else:
                    if piece.dtype != DTYPES[e.dtype]:
                        raise ValueError(f"{e.name}: source dtype {piece.dtype} != {e.dtype}")
                    size = _write_all(f, piece.reshape(-1).view(torch.uint8).numpy())
                n += size
                if on_bytes:
                    on_bytes(size)
            if n != e.nbytes:
                raise ValueError(f"{e.name}: wrote {n} bytes, expected {e.nbytes}")
            written += n
    return written


def write_checkpoint(out_dir: Path, source: TensorSource, layout: ShardLayout,
                     progress: Callable[[float, str], None] | None = None) -> list[str]:
    """Every shard of `layout` from `source`, plus the index when there is more than one shard.
    Returns the file names written."""
    total = layout.total_bytes
    done = 0

    def on_bytes(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(done / max(total, 1), f"writing weights: {done / 1e9:.2f} of {total / 1e9:.2f} GB")

    try:
        for name, entries in layout.files.items():
            write_shard(out_dir / name, entries, source, on_bytes)
    finally:
        source.close()
    if layout.index is not None:
        (out_dir / INDEX_FILE).write_text(json.dumps(layout.index, indent=2) + "\n")
    return layout.names
