"""The approximate index: a faiss IVF-PQ over the vector rows, derived from SQLite and kept beside it.

`ann.faiss` holds a header (format, faiss version, model key, dim, the vector file's generation, the
parameters and a checksum) and the serialised faiss index, whose ids are vector ROWS (vectors.row).
It is never the source of truth. Whoever uses it compares its rows with the live rows of the current
SQLite snapshot: rows it holds that are no longer live are dropped, live rows it lacks are scored
exactly, and every candidate is re-ranked from the float16 vectors (a search of every file does the
same without listing the live rows: dead candidates have no file to look up, and the live rows it
lacks are the rows from `covers` on, see direct.py). So a kill between a commit and the
ANN write (or a reader holding an older ANN file) costs speed, never correctness. Rows are append-only
within a generation (a row's vector never changes), and compaction or --rebuild starts a new
generation, which the header names: an ANN file of another generation is rebuilt, not trusted.

Why IVF-PQ and not a graph (HNSW, usearch): the float16 vectors already cost 1,024 bytes per image at
dim 512; 4-bit PQ codes add 64 bytes plus an 8-byte id, where a graph needs its own copy of the vectors
and its links. Exact re-ranking from the stored vectors turns the PQ's rough scores back into exact ones.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ANN_NAME = "ann.faiss"
BITS = 4  # faiss's fast-scan PQ: codes scored 32 at a time from SIMD registers
FORMAT = 1
_MAGIC = b"VITKANN\n"
# An incremental update keeps the trained centroids and codebooks; once the collection is this many
# times what they were trained on, they no longer describe it well and the structure is retrained.
RETRAIN_GROWTH = 4.0
TRAIN_SAMPLE_PER_LIST = 40  # faiss warns (on stderr) below 39 training points per centroid
TRAIN_SAMPLE_MIN = 30_000
_ADD_CHUNK = 65_536  # rows converted to float32 at a time, so memory stays bounded while building
# faiss's OpenMP threads spin at their barriers: on a busy machine two threads trained a small index 20x
# slower than one. Only big builds and syncs, where the arithmetic dominates, get every core.
PARALLEL_FROM_ROWS = 100_000


@dataclass(frozen=True)
class AnnHeader:
    format: int
    faiss: str
    model_key: str
    dim: int
    generation: int
    nlist: int
    subquantizers: int
    bits: int
    trained_on: int  # live rows when the quantisers were trained
    checksum: int  # crc32 of the serialised faiss index


class AnnIndex:
    """A loaded approximate index and the rows it holds (sorted)."""

    def __init__(self, index, header: AnnHeader, rows: np.ndarray | None = None) -> None:
        self.index = index
        self.header = header
        self._rows = rows

    @property
    def rows(self) -> np.ndarray:
        if self._rows is None:
            self._rows = _ids_of(self.index)
        return self._rows

    @rows.setter
    def rows(self, rows: np.ndarray) -> None:
        self._rows = rows

    @property
    def covers(self) -> int:
        """Rows below this that it lacks were not live when it was last synced: one past its highest row
        (read from the lists without sorting them all when the rows are not known yet)."""
        if self._rows is not None:
            return int(self._rows[-1]) + 1 if len(self._rows) else 0
        return _highest_id(self.index) + 1

    def search(self, query: np.ndarray, pool: int, probes: int, row_filter: np.ndarray | None = None) -> np.ndarray:
        """Candidate rows for one (1, D) unit query, approximately best first (see search_batch)."""
        found = self.search_batch(query, pool, probes, row_filter)[0]
        return found[found >= 0]

    def search_batch(self, queries: np.ndarray, pool: int, probes: int,
                     row_filter: np.ndarray | None = None) -> np.ndarray:
        """(B, pool) candidate rows for (B, D) unit queries, approximately best first, -1 where fewer were
        found. `row_filter` (from `row_filter()`) keeps only those rows while scanning, so a folder
        restriction still gets a full pool of candidates from inside it."""
        import faiss

        params = faiss.SearchParametersIVF(nprobe=min(probes, self.header.nlist))
        if row_filter is not None:
            selector = faiss.IDSelectorBitmap(len(row_filter), faiss.swig_ptr(row_filter))  # length in bytes
            params.sel = selector  # the selector must outlive the search: keep `selector` alive until then
        with _threads(self.index.ntotal if len(queries) > 1 else 0):  # one query gains nothing from threads
            _, found = self.index.search(queries, pool, params=params)
        return found

    def sync(self, vectors: np.ndarray, live: np.ndarray) -> bool:
        """Drop rows that are no longer live and add live rows it lacks; returns whether anything changed."""
        import faiss

        stale = np.setdiff1d(self.rows, live, assume_unique=True)
        missing = np.setdiff1d(live, self.rows, assume_unique=True)
        with _threads(len(missing)):
            if len(stale):
                self.index.remove_ids(faiss.IDSelectorBatch(stale.astype(np.int64)))
            _add_rows(self.index, vectors, missing)
        if len(stale) or len(missing):
            self.rows = live.copy()
        return bool(len(stale) or len(missing))

    def needs_retraining(self, live_count: int) -> bool:
        return live_count > RETRAIN_GROWTH * max(self.header.trained_on, 1) or self.header.nlist < _nlist_for(live_count) / 4


def live_rows(rows: np.ndarray) -> np.ndarray:
    """Sorted distinct rows the snapshot's files refer to (copies share one)."""
    present = np.zeros(int(rows.max()) + 1 if len(rows) else 0, dtype=bool)
    present[rows] = True  # linear: np.unique sorts
    return np.flatnonzero(present)


def build(vectors: np.ndarray, live: np.ndarray, model_key: str, generation: int) -> AnnIndex:
    """Train the quantisers on a sample of the live rows and add them all."""
    import faiss

    dim = vectors.shape[1]
    nlist, subquantizers = _nlist_for(len(live)), _subquantizers_for(dim)
    with _threads(len(live)):
        index = faiss.index_factory(dim, f"IVF{nlist},PQ{subquantizers}x{BITS}fs", faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = index.pq.cp.niter = 10  # past 10 rounds k-means moves centroids, not recall
        # faiss warns (on stderr) when a small index gives few points per centroid; recall is checked instead.
        index.cp.min_points_per_centroid = index.pq.cp.min_points_per_centroid = 1
        size = min(len(live), max(TRAIN_SAMPLE_MIN, TRAIN_SAMPLE_PER_LIST * nlist))
        sample = np.sort(np.random.default_rng(0).choice(live, size, replace=False))
        training = np.asarray(vectors[sample], dtype=np.float32)
        repeats = -(-(1 << BITS) // len(training))  # each codebook has 2**BITS centroids to place
        index.train(np.concatenate([training] * repeats) if repeats > 1 else training)
        _add_rows(index, vectors, live)
    header = AnnHeader(FORMAT, faiss.__version__, model_key, dim, generation, nlist, subquantizers, BITS, len(live), 0)
    ann = AnnIndex(index, header)
    ann.rows = live.copy()
    return ann


def load(folder: Path, model_key: str, dim: int, generation: int) -> tuple[AnnIndex | None, str | None]:
    """(the ANN index, None), or (None, why it cannot be used) when missing, damaged or made for
    another model, dimension, vector file generation, format or faiss version."""
    path = folder / ANN_NAME
    try:
        with open(path, "rb") as f:
            # Mapped, not read: the checksum and faiss read the page cache directly (one copy, not three:
            # ~50 ms instead of ~230 at 1M vectors). A save renames a new file over this one, so the
            # mapped bytes stay the ones checked.
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        return None, "missing"
    except OSError as e:
        return None, f"unreadable ({e.strerror})"
    except ValueError:  # an empty file cannot be mapped
        return None, "damaged (empty)"
    try:
        return _parse(data, model_key, dim, generation)
    finally:
        data.close()


def _parse(data: mmap.mmap, model_key: str, dim: int, generation: int) -> tuple[AnnIndex | None, str | None]:
    import faiss

    try:
        if data[:len(_MAGIC)] != _MAGIC:
            raise ValueError("not an approximate index")
        length = int.from_bytes(data[len(_MAGIC):len(_MAGIC) + 4], "little")
        start = len(_MAGIC) + 4 + length
        header = AnnHeader(**json.loads(data[len(_MAGIC) + 4:start]))
        with memoryview(data) as whole, whole[start:] as payload:  # released: the map closes after
            if zlib.crc32(payload) != header.checksum:
                raise ValueError("checksum mismatch")
    except (ValueError, TypeError, UnicodeDecodeError) as e:
        return None, f"damaged ({e})"
    wanted = (FORMAT, faiss.__version__, model_key, dim, generation)
    if (header.format, header.faiss, header.model_key, header.dim, header.generation) != wanted:
        return None, "out of date (made for another vector file, model or version)"
    position = start

    def read(size: int) -> bytes:
        nonlocal position
        chunk = data[position:position + size]
        position += len(chunk)
        return chunk

    try:
        index = faiss.read_index(faiss.PyCallbackIOReader(read))
    except RuntimeError as e:
        return None, f"damaged ({str(e).splitlines()[0]})"
    return AnnIndex(index, header), None


def file_signature(folder: Path) -> tuple[int, ...] | None:
    """Changes whenever the ANN file is saved again (a new file renamed over it); None when missing."""
    try:
        found = (folder / ANN_NAME).stat()
    except OSError:
        return None
    return found.st_ino, found.st_mtime_ns, found.st_size


def save(folder: Path, ann: AnnIndex) -> None:
    """Write atomically: a new file, fsynced, renamed over the old one. A kill leaves the old file (or
    none) plus a temporary file the next save overwrites; either way readers check it against SQLite."""
    import faiss

    payload = faiss.serialize_index(ann.index)
    header = AnnHeader(**{**asdict(ann.header), "checksum": zlib.crc32(payload)})
    ann.header = header
    encoded = json.dumps(asdict(header)).encode()
    temporary = folder / (ANN_NAME + ".tmp")
    with open(temporary, "wb") as f:
        f.write(_MAGIC + len(encoded).to_bytes(4, "little") + encoded)
        f.write(memoryview(payload))
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, folder / ANN_NAME)


def ensure(folder: Path, vectors: np.ndarray, live: np.ndarray, model_key: str, generation: int,
           warn: Callable[[str], None], current: AnnIndex | None = None,
           warn_missing: bool = True) -> tuple[AnnIndex, bool]:
    """An ANN index holding exactly the `live` rows: `current` or the saved one brought up to date, or a
    new one when neither can be used (with a warning when the saved one is damaged or out of date, or
    missing and `warn_missing`). Returns it and whether it differs from the saved file."""
    reason = None
    if current is None or current.header.generation != generation:
        current, reason = load(folder, model_key, vectors.shape[1], generation)
    if current is not None and current.needs_retraining(len(live)):
        current = None  # grown far past what the quantisers were trained on: retrain, no warning
    if current is None:
        if reason is not None and (reason != "missing" or warn_missing):
            warn(f"the approximate search index {folder / ANN_NAME} is {reason}; rebuilding it")
        return build(vectors, live, model_key, generation), True
    return current, current.sync(vectors, live)


def _add_rows(index, vectors: np.ndarray, rows: np.ndarray) -> None:
    for start in range(0, len(rows), _ADD_CHUNK):
        chunk = rows[start:start + _ADD_CHUNK]
        index.add_with_ids(np.asarray(vectors[chunk], dtype=np.float32), chunk.astype(np.int64))


def row_filter(rows_inside: np.ndarray) -> np.ndarray:
    """A (R,) bool mask of rows as the packed bitmap search() takes (faiss's IDSelectorBitmap reads
    bits little-endian)."""
    return np.packbits(rows_inside, bitorder="little")


@contextmanager
def _threads(rows: int) -> Iterator[None]:
    """faiss's threads for work on `rows` rows, restored after: torch shares the OpenMP runtime."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(before if rows >= PARALLEL_FROM_ROWS else 1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _ids_of(index) -> np.ndarray:
    import faiss

    lists = index.invlists
    parts = [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
             for i in range(index.nlist) if lists.list_size(i)]
    return live_rows(np.concatenate(parts)) if parts else np.zeros(0, np.int64)  # sorted, in linear time


def _highest_id(index) -> int:
    import faiss

    lists, highest = index.invlists, -1
    for i in range(index.nlist):
        size = lists.list_size(i)
        if size:
            highest = max(highest, int(faiss.rev_swig_ptr(lists.get_ids(i), size).max()))
    return highest


def _nlist_for(count: int) -> int:
    # About sqrt(N) lists, a power of two, with at least 39 points each (faiss's rule for k-means).
    wanted = 2 ** round(math.log2(max(math.sqrt(max(count, 1)), 1)))
    return int(max(1, min(wanted, count // 39)))


def _subquantizers_for(dim: int) -> int:
    """One 4-bit code per 4 dimensions (64 bytes at dim 512); faiss wants a divisor of dim."""
    for m in range(max(1, dim // 4), 0, -1):
        if dim % m == 0:
            return m
    return 1
