"""The vector file: append-only little-endian float16 rows, L2-normalised; row i starts at byte i * dim * 2.

The live file is `vectors.f16` (generation 0) or `vectors.N.f16`; SQLite's `meta` names the generation,
so a rebuild or a compaction switches files in the same commit that switches the rows pointing into them.
Files of other generations are leftovers (an old file after a switch, a half-written copy after a kill)
that the next writer deletes.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path

import numpy as np

VECTOR_DTYPE = np.dtype("<f2")
# Rows are converted or copied through buffers this big, so memory stays bounded at any index size.
CHUNK_BYTES = 8 << 20
_FILE_NAME_RE = re.compile(r"vectors(\.\d+)?\.f16")


def vectors_file_name(generation: int) -> str:
    return "vectors.f16" if generation == 0 else f"vectors.{generation}.f16"


def fsync_dir(folder: Path) -> None:
    # A new file's name is durable only once its directory is synced; SQLite must not refer to it sooner.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_empty(folder: Path, generation: int) -> None:
    """The live file must exist before a commit names it or a reader maps it."""
    os.close(os.open(folder / vectors_file_name(generation), os.O_WRONLY | os.O_CREAT, 0o644))
    fsync_dir(folder)


def map_vectors(path: Path, dim: int) -> np.ndarray:
    """(R, D) float16 read-only view of the whole rows in the file; a partial trailing row is left out."""
    rows = path.stat().st_size // (dim * VECTOR_DTYPE.itemsize)
    if rows == 0:
        return np.zeros((0, dim), VECTOR_DTYPE)  # mmap refuses empty files
    return np.memmap(path, dtype=VECTOR_DTYPE, mode="r", shape=(rows, dim))


def normalised(vectors: np.ndarray, dim: int, names: Sequence[str] | None = None) -> np.ndarray:
    """(N, D) float32 rows scaled to unit length; zero or non-finite rows are refused, by name if given."""
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2 or array.shape[1] != dim:
        raise ValueError(f"vectors must have shape (N, {dim}), got {array.shape}")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    bad = ~np.isfinite(norms[:, 0]) | (norms[:, 0] == 0)
    if bad.any():
        first = int(np.argmax(bad))
        name = names[first] if names is not None else f"query {first}"
        raise ValueError(f"the vector for {name} is zero or not finite; it has no direction")
    return array / norms


class VectorFile:
    """The writer's handle on the live file. Unbuffered: a full disk fails in append(), not at a later
    flush or in close()."""

    def __init__(self, path: Path, dim: int) -> None:
        self.path = path
        self.dim = dim
        self._file: io.FileIO = open(path, "r+b", buffering=0)
        row_bytes = dim * VECTOR_DTYPE.itemsize
        size = os.fstat(self._file.fileno()).st_size
        if size % row_bytes:  # a write cut short by a kill: nothing refers to it
            self._file.truncate(size - size % row_bytes)
            os.fsync(self._file.fileno())
        self.rows = size // row_bytes  # the next row's number

    def append(self, vectors: np.ndarray) -> None:
        """Write (N, D) rows at the end and fsync them: the commit that refers to them comes after."""
        data = np.ascontiguousarray(vectors, dtype=VECTOR_DTYPE)
        offset = self.rows * self.dim * VECTOR_DTYPE.itemsize
        fd = self._file.fileno()
        try:
            _write_all(fd, memoryview(data).cast("B"), offset)
            os.fsync(fd)
        except BaseException:
            with suppress(OSError):  # best effort: the next writer truncates a partial row anyway
                os.ftruncate(fd, offset)
            raise
        self.rows += len(data)

    def close(self) -> None:
        self._file.close()


def remove_other_generations(folder: Path, live: str) -> None:
    for stale in folder.iterdir():
        if _FILE_NAME_RE.fullmatch(stale.name) and stale.name != live:
            stale.unlink(missing_ok=True)


def copy_rows(source: Path, target: Path, rows: np.ndarray, dim: int) -> None:
    """Write `rows` of `source`, in order, as a new file `target`, fsynced; the target is removed if
    the copy fails (a kill leaves it for the next writer to delete)."""
    vectors = map_vectors(source, dim)
    step = max(1, CHUNK_BYTES // (dim * VECTOR_DTYPE.itemsize))
    try:
        with open(target, "wb") as f:
            for start in range(0, len(rows), step):
                f.write(np.ascontiguousarray(vectors[rows[start:start + step]]).tobytes())
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        target.unlink(missing_ok=True)
        raise


def _write_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written
