"""Embedded, incremental vector index: SQLite says what each file is, a raw float16 file holds the vectors.

An index folder holds:
  index.sqlite   metadata, in WAL mode so readers never wait for the writer
  vectors.f16    append-only little-endian float16 rows, L2-normalised; row i starts at byte i * dim * 2
                 (after a rebuild or compact the live file is vectors.N.f16, named in `meta`)
  index.lock     flock held by the one writer; holds its pid for the "locked" message

Crash safety rests on one ordering: vector bytes are fsynced before the SQLite transaction that refers
to their rows commits. A kill at any moment leaves either rows nothing refers to (harmless garbage) or
a partial trailing row (truncated by the next writer), never a reference to bytes that are not there.
Readers touch only rows their SQLite snapshot refers to, so they can search while a writer appends.
"""

from __future__ import annotations

import bisect
import fcntl
import hashlib
import io
import os
import re
import sqlite3
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vitkit.errors import IndexError_, IndexLockedError, IndexModelMismatchError, IndexSchemaError
from vitkit.outputs.files import NO_SPACE, NOT_WRITABLE, get_write_failure_kind

if TYPE_CHECKING:
    import torch

SCHEMA_VERSION = 1

DB_NAME = "index.sqlite"
LOCK_NAME = "index.lock"
HASH_CHUNK_BYTES = 1 << 20
# Search converts float16 rows to float32 in a buffer this big, chunk by chunk, so memory stays bounded at
# any index size. Small enough to stay in cache: at 1M x 512 a single query ran ~2.5x faster than with 32 MiB.
SEARCH_BUFFER_BYTES = 8 << 20
HASH_THREADS = 4  # hashing is I/O-bound and blake2b releases the GIL, so a few threads overlap reads
_SQL_BATCH = 900  # stays under SQLite's bound-parameter limit on old builds (999)
_LOCK_POLL_SECONDS = 0.05
_SNAPSHOT_TRIES = 3
_VECTOR_DTYPE = np.dtype("<f2")
_VECTORS_FILE_RE = re.compile(r"vectors(\.\d+)?\.f16")

# Each statement says why it exists; they run in one transaction with `PRAGMA user_version`, so an index
# is either fully initialised or not an index at all.
_SCHEMA = (
    # model_key and dim tag the vector space: vectors from different models must never be compared.
    # generation names the live vector file, so a rebuild or compact switches files in the same commit
    # that switches the rows pointing into them (a reader's snapshot always matches its file).
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    # One vector per distinct content: renames and copies share a row instead of being re-embedded.
    # Rows outlive the files that used them (until compact), so content that comes back is free.
    "CREATE TABLE vectors (row INTEGER PRIMARY KEY, content_hash TEXT UNIQUE NOT NULL)",
    # What the filesystem looked like when each file was indexed: an unchanged (size, mtime_ns) skips
    # hashing. WITHOUT ROWID stores the path once (as the key) instead of in a table and an index.
    # row refers to vectors.row; no FOREIGN KEY, as SQLite leaves enforcement off and add() checks it.
    """CREATE TABLE files (
        path TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        content_hash TEXT NOT NULL,
        row INTEGER NOT NULL,
        width INTEGER,
        height INTEGER
    ) WITHOUT ROWID""",
)

_UPSERT_FILE = """INSERT INTO files (path, size, mtime_ns, content_hash, row, width, height)
    VALUES (?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns,
        content_hash = excluded.content_hash, row = excluded.row, width = excluded.width, height = excluded.height"""


@dataclass(frozen=True)
class FileState:
    """What the filesystem says about one image; path is absolute and normalised (the index key)."""

    path: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class UpdatePlan:
    unchanged: tuple[str, ...]  # same path, size and mtime as stored: nothing to do
    reusable: tuple[tuple[str, str], ...]  # (path, content_hash) with a stored vector: no embedding needed
    to_embed: tuple[tuple[str, str], ...]  # (path, content_hash) new or changed content
    hash_failures: tuple[tuple[str, str], ...]  # (path, reason)


@dataclass(frozen=True)
class Hit:
    path: str
    score: float  # cosine similarity


@dataclass(frozen=True)
class MergeCounts:
    added: int  # paths new to the target
    replaced: int  # paths the target held with an older (or equal) mtime and other content or size
    unchanged: int  # paths the target already held exactly so
    kept: int  # paths the target held with a newer mtime: its entry stays


@dataclass(frozen=True)
class IndexStats:
    files: int
    vectors: int  # stored vectors, one per distinct content (including ones kept for reuse until compact)
    dim: int
    model_key: str
    bytes_on_disk: int


@dataclass(frozen=True)
class _Meta:
    model_key: str
    dim: int
    generation: int


@dataclass(frozen=True, eq=False)
class _Snapshot:
    """Everything search needs from one committed state of the index."""

    data_version: int
    paths: list[str]  # sorted, so an entry's position is its tie-break rank and folders are ranges
    rows: np.ndarray  # (F,) int64, vector row of each entry
    by_row: np.ndarray  # (F,) entry positions sorted by row, so chunks read the vector file in order
    vectors: np.ndarray  # (R, D) float16, memory-mapped


# --- files -------------------------------------------------------------------------------------


def file_state(path: str) -> FileState:
    stat = os.stat(path)
    return FileState(os.path.abspath(path), stat.st_size, stat.st_mtime_ns)


def content_hash(path: str) -> str:
    """blake2b-128 of the file's bytes, hex; streamed so large files cost no memory."""
    digest = hashlib.blake2b(digest_size=16)
    buffer = bytearray(HASH_CHUNK_BYTES)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while size := f.readinto(buffer):
            digest.update(view[:size])
    return digest.hexdigest()


def _vectors_file_name(generation: int) -> str:
    return "vectors.f16" if generation == 0 else f"vectors.{generation}.f16"


def _fsync_dir(folder: Path) -> None:
    # A new file's name is durable only once its directory is synced; SQLite must not refer to it sooner.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _map_vectors(path: Path, dim: int) -> np.ndarray:
    """(R, D) float16 view of the whole rows in the file; a partial trailing row is left out."""
    rows = path.stat().st_size // (dim * _VECTOR_DTYPE.itemsize)
    if rows == 0:
        return np.zeros((0, dim), _VECTOR_DTYPE)  # mmap refuses empty files
    return np.memmap(path, dtype=_VECTOR_DTYPE, mode="r", shape=(rows, dim))


def _is_storable(path: str) -> bool:
    # SQLite TEXT is UTF-8; names with undecodable bytes (surrogate escapes) cannot be keys.
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _try_hash(path: str) -> tuple[str | None, str | None]:
    try:
        return content_hash(path), None
    except OSError as e:
        return None, e.strerror or type(e).__name__


def _prefix_range(folder: str) -> tuple[str, str, str]:
    """(folder, lo, hi): paths inside are lo <= p < hi. Comparing strings keeps LIKE's % and _ out,
    and the separator stops /a/b from matching /a/bc."""
    folder = os.path.abspath(folder)
    lo = folder if folder.endswith(os.sep) else folder + os.sep
    return folder, lo, lo[:-1] + chr(ord(lo[-1]) + 1)


def _batches(items: Sequence, size: int = _SQL_BATCH) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


# --- lock --------------------------------------------------------------------------------------


def _acquire_lock(folder: Path, wait_seconds: float) -> int:
    """The writer lock's fd; flock is released by the kernel however the holder dies."""
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + max(0.0, wait_seconds)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pid = _read_lock_pid(fd)
                os.close(fd)
                raise IndexLockedError(f"index {folder} is locked by another vitkit process (pid {pid})",
                                       hint="wait for it to finish, or pass --wait SECONDS") from None
            time.sleep(min(_LOCK_POLL_SECONDS, remaining))
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _read_lock_pid(fd: int) -> str:
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return text if text.isdigit() else "unknown"


# --- sqlite ------------------------------------------------------------------------------------


def _connect(db: Path, *, readonly: bool) -> sqlite3.Connection:
    # isolation_level=None: transactions are explicit (see _transaction), never opened behind our back.
    target = db.absolute().as_uri() + ("?mode=ro" if readonly else "")
    return sqlite3.connect(target, uri=True, isolation_level=None, timeout=30.0)


@contextmanager
def _transaction(conn: sqlite3.Connection, begin: str = "BEGIN IMMEDIATE") -> Iterator[None]:
    conn.execute(begin)
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        # A COMMIT that fails (disk full) leaves the transaction open; a failed ROLLBACK must not hide why.
        with suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


_BUSY = "busy"
_SQLITE_KINDS = {sqlite3.SQLITE_FULL: NO_SPACE, sqlite3.SQLITE_READONLY: NOT_WRITABLE,
                 sqlite3.SQLITE_PERM: NOT_WRITABLE, sqlite3.SQLITE_BUSY: _BUSY, sqlite3.SQLITE_LOCKED: _BUSY}
_WRITE_HINTS = {
    NO_SPACE: "free some space (or use another --index) and run again",
    NOT_WRITABLE: "check the index folder's permissions (or use another --index) and run again",
    # vitkit's own writers take the lock file first, so this is another program holding the database.
    _BUSY: "another program is using the index database; close it and run again",
}
_OTHER_HINT = "check the index folder and its disk, and run again"


def _write_failure_hint(error: OSError | sqlite3.OperationalError) -> str:
    if isinstance(error, OSError):
        kind = get_write_failure_kind(error)
    else:  # the primary result code; an extended one (SQLITE_IOERR_WRITE...) adds detail in the high bits
        kind = _SQLITE_KINDS.get((getattr(error, "sqlite_errorcode", None) or 0) & 0xFF)
    return _WRITE_HINTS.get(kind, _OTHER_HINT) + "; every batch finished before this is kept"


@contextmanager
def _write_errors(folder: Path) -> Iterator[None]:
    """A full disk, a file-size limit or a read-only folder becomes one clear error. Earlier commits
    stay, and the crash-safety ordering means nothing refers to vector bytes of the failed write."""
    try:
        yield
    except (OSError, sqlite3.OperationalError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise IndexError_(f"cannot write to index {folder}: {reason}", hint=_write_failure_hint(e)) from e


def _not_an_index(folder: Path) -> IndexSchemaError:
    return IndexSchemaError(f"{folder / DB_NAME} is not a vitkit index",
                            hint="point --index at another folder")


def _open_error(folder: Path, error: sqlite3.DatabaseError) -> IndexError_:
    if isinstance(error, sqlite3.OperationalError):  # cannot open, read-only, locked too long: not the file's fault
        return IndexError_(f"cannot use index {folder}: {error}",
                           hint="check the path, its permissions and the free disk space")
    return _not_an_index(folder)


def _no_index(folder: Path) -> IndexSchemaError:
    return IndexSchemaError(f"no index at {folder}", hint="build one with `vitkit index FOLDER`")


def _check_version(conn: sqlite3.Connection, folder: Path) -> int:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise IndexSchemaError(f"index {folder} was written by a newer vitkit (schema {version}, "
                               f"this one reads up to {SCHEMA_VERSION})", hint="upgrade vitkit")
    return version


def _read_meta(conn: sqlite3.Connection, folder: Path) -> _Meta:
    try:
        values = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        return _Meta(values["model_key"], int(values["dim"]), int(values["generation"]))
    except (sqlite3.OperationalError, KeyError, ValueError):
        raise _not_an_index(folder) from None


def _create_schema(conn: sqlite3.Connection, folder: Path, model_key: str, dim: int) -> _Meta:
    if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
        raise _not_an_index(folder)  # someone else's database: never add tables to it
    for statement in _SCHEMA:
        conn.execute(statement)
    meta = _Meta(model_key, dim, 0)
    _write_meta(conn, meta)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")  # an int constant; PRAGMA takes no parameters
    return meta


def _write_meta(conn: sqlite3.Connection, meta: _Meta) -> None:
    conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                     [("model_key", meta.model_key), ("dim", str(meta.dim)), ("generation", str(meta.generation))])


def _describe(meta: _Meta, other_key: str, other_dim: int) -> tuple[str, str]:
    if meta.model_key == other_key:
        return f"{meta.model_key} (dim {meta.dim})", f"{other_key} (dim {other_dim})"
    return meta.model_key, other_key


def _prepare_for_writing(conn: sqlite3.Connection, folder: Path, model_key: str, dim: int, rebuild: bool) -> _Meta:
    """Create, check or reset the schema in one transaction; returns the meta to write with."""
    conn.execute("PRAGMA journal_mode = WAL")  # persistent in the file; must run outside a transaction
    with _transaction(conn):
        if _check_version(conn, folder) == 0:
            meta = _create_schema(conn, folder, model_key, dim)
        else:
            meta = _read_meta(conn, folder)
            if rebuild:
                meta = _reset(conn, folder, meta, model_key, dim)
            elif (meta.model_key, meta.dim) != (model_key, dim):
                old, new = _describe(meta, model_key, dim)
                raise IndexModelMismatchError(
                    f"index {folder} was built with {old}, not {new}",
                    hint="pass --rebuild to re-embed everything with the new model, or use --index DIR for a separate index")
        # The live file must exist before a commit names it (rebuild) or a reader maps it (new index).
        os.close(os.open(folder / _vectors_file_name(meta.generation), os.O_WRONLY | os.O_CREAT, 0o644))
        _fsync_dir(folder)
    return meta


def _reset(conn: sqlite3.Connection, folder: Path, meta: _Meta, model_key: str, dim: int) -> _Meta:
    # A new, empty vector file rather than truncating the old one: readers may have the old one mapped
    # (touching truncated pages kills them with SIGBUS) and their snapshots still point into it.
    conn.execute("DELETE FROM files")
    conn.execute("DELETE FROM vectors")
    new = _Meta(model_key, dim, meta.generation + 1)
    _write_meta(conn, new)
    return new


def _rows_for_hashes(conn: sqlite3.Connection, hashes: Sequence[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    for batch in _batches(hashes):
        marks = ",".join("?" * len(batch))
        found.update(conn.execute(f"SELECT content_hash, row FROM vectors WHERE content_hash IN ({marks})", batch))
    return found


def _stored_states(conn: sqlite3.Connection, paths: Sequence[str]) -> dict[str, tuple[int, int, str]]:
    found: dict[str, tuple[int, int, str]] = {}
    for batch in _batches(paths):
        marks = ",".join("?" * len(batch))
        query = f"SELECT path, size, mtime_ns, content_hash FROM files WHERE path IN ({marks})"
        found.update((path, (size, mtime, digest)) for path, size, mtime, digest in conn.execute(query, batch))
    return found


# --- search ------------------------------------------------------------------------------------


def _normalised(vectors: np.ndarray, dim: int, names: Sequence[str] | None = None) -> np.ndarray:
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


def _folders(under: Sequence[str]) -> list[str]:
    # A bare string would iterate as one-character "folders", and "/" contains everything.
    if isinstance(under, (str, bytes, os.PathLike)):
        raise TypeError(f"under must be a sequence of folders, not one path: {under!r}")
    return list(under)


def _entries_under(snapshot: _Snapshot, under: Sequence[str]) -> np.ndarray:
    """Entry positions (sorted by row) whose path is one of `under` or inside one of those folders."""
    inside = np.zeros(len(snapshot.paths), dtype=bool)
    for folder in _folders(under):
        exact, lo, hi = _prefix_range(folder)
        start = bisect.bisect_left(snapshot.paths, exact)
        if start < len(snapshot.paths) and snapshot.paths[start] == exact:
            inside[start] = True
        inside[bisect.bisect_left(snapshot.paths, lo):bisect.bisect_left(snapshot.paths, hi)] = True
    return snapshot.by_row[inside[snapshot.by_row]]


def _gather(vectors: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(n, D) float16 for sorted rows; a consecutive run is sliced from the map without a gather."""
    if rows[-1] - rows[0] + 1 == len(rows):
        return vectors[rows[0]:rows[-1] + 1]
    return vectors[rows]


def _candidates(snapshot: _Snapshot, entries: np.ndarray, queries: np.ndarray, k: int,
                buffer: torch.Tensor) -> tuple[np.ndarray, ...]:
    """(query, score, entry) triples holding each query's top k, ties at the k-th score included,
    scored chunk by chunk through `buffer` ((C, D) float32) so memory stays bounded at any index size."""
    import torch

    q = torch.from_numpy(queries)  # (Q, D)
    found: list[tuple[np.ndarray, ...]] = []
    with warnings.catch_warnings():
        # The map is read-only and torch only reads it; its "not writable" warning is noise.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for start in range(0, len(entries), len(buffer)):
            chunk = entries[start:start + len(buffer)]
            block = buffer[:len(chunk)]
            block.copy_(torch.from_numpy(_gather(snapshot.vectors, snapshot.rows[chunk])))
            scores = q @ block.T  # (Q, C) float32
            kth = torch.topk(scores, min(k, len(chunk)), dim=1).values[:, -1:]  # (Q, 1)
            query, column = torch.nonzero(scores >= kth, as_tuple=True)
            found.append((query.numpy(), scores[query, column].numpy(), chunk[column.numpy()]))
    return tuple(np.concatenate(parts) for parts in zip(*found))


def _best_hits(scores: np.ndarray, entries: np.ndarray, paths: list[str], k: int,
               threshold: float | None) -> list[Hit]:
    # Entries are in path order, so sorting on (-score, entry) breaks ties by path, deterministically.
    order = np.lexsort((entries, -scores))[:k]
    return [Hit(paths[e], float(s)) for s, e in zip(scores[order], entries[order])
            if threshold is None or s >= threshold]


# --- the index ---------------------------------------------------------------------------------


class VectorIndex:
    """One index folder, opened either by its one writer (holding the lock) or by any number of readers.
    Not for concurrent use from several threads; open one instance per thread instead."""

    def __init__(self, folder: Path, conn: sqlite3.Connection, meta: _Meta, lock_fd: int | None) -> None:
        self.folder = folder
        self.model_key = meta.model_key
        self.dim = meta.dim
        self._conn = conn
        self._generation = meta.generation
        self._lock_fd = lock_fd
        self._file: io.FileIO | None = None  # the writer's vector file, unbuffered: see _append
        self._next_row = 0
        self._snapshot_cache: _Snapshot | None = None
        self._buffer: torch.Tensor | None = None

    # --- opening -------------------------------------------------------------------------------

    @classmethod
    def open_for_writing(cls, folder: str | Path, model_key: str, dim: int, *, rebuild: bool = False,
                         wait_seconds: float = 0.0) -> VectorIndex:
        """Open (creating if missing) for adding and removing; one writer at a time per folder."""
        if not model_key or dim < 1:
            raise ValueError(f"an index needs a model key and a positive dim, got {model_key!r}, {dim}")
        folder = Path(folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise IndexError_(f"cannot create index folder {folder}: {e.strerror}",
                              hint="check the path and its permissions") from None
        with _write_errors(folder):
            lock_fd = _acquire_lock(folder, wait_seconds)
        conn = None
        try:
            conn = _connect(folder / DB_NAME, readonly=False)
            meta = _prepare_for_writing(conn, folder, model_key, dim, rebuild)
        except BaseException as e:
            if conn is not None:
                conn.close()
            os.close(lock_fd)
            if isinstance(e, sqlite3.DatabaseError):
                raise _open_error(folder, e) from e
            raise
        index = cls(folder, conn, meta, lock_fd)
        try:
            with _write_errors(folder):
                index._open_vector_file()
        except BaseException:
            index.close()
            raise
        return index

    @classmethod
    def open_for_reading(cls, folder: str | Path, model_key: str | None = None) -> VectorIndex:
        """Open for searching, without the lock: a writer may be adding to the index meanwhile."""
        folder = Path(folder)
        if not (folder / DB_NAME).is_file():
            raise _no_index(folder)
        conn = None
        try:
            conn = _connect(folder / DB_NAME, readonly=True)
            with _transaction(conn, "BEGIN"):
                if _check_version(conn, folder) == 0:
                    raise _no_index(folder)  # a writer died before finishing the first transaction
                meta = _read_meta(conn, folder)
        except BaseException as e:
            if conn is not None:
                conn.close()
            if isinstance(e, sqlite3.DatabaseError):
                raise _open_error(folder, e) from e
            raise
        index = cls(folder, conn, meta, None)
        if model_key is not None and model_key != meta.model_key:
            index.close()
            raise IndexModelMismatchError(
                f"index {folder} was built with {meta.model_key}, not {model_key}",
                hint=f"search with --model {meta.model_key}, or rebuild the index with --rebuild")
        return index

    def _open_vector_file(self) -> None:
        """Truncate a partial trailing row (a write cut short), take row numbers from the length,
        and delete vector files a rebuild or compact left behind."""
        path = self.folder / _vectors_file_name(self._generation)
        self._file = open(path, "r+b", buffering=0)
        row_bytes = self.dim * _VECTOR_DTYPE.itemsize
        size = os.fstat(self._file.fileno()).st_size
        if size % row_bytes:
            self._file.truncate(size - size % row_bytes)
            os.fsync(self._file.fileno())
        self._next_row = size // row_bytes
        highest = self._conn.execute("SELECT max(row) FROM vectors").fetchone()[0]
        if highest is not None and highest >= self._next_row:
            raise self._damaged(f"{path.name} has {self._next_row} rows but row {highest} is in use")
        for stale in self.folder.iterdir():
            if _VECTORS_FILE_RE.fullmatch(stale.name) and stale.name != path.name:
                stale.unlink(missing_ok=True)

    def _damaged(self, detail: str) -> IndexSchemaError:
        return IndexSchemaError(f"index {self.folder} is damaged: {detail}",
                                hint="rebuild it with --rebuild")

    def _require_writer(self) -> None:
        if self._lock_fd is None:
            raise IndexError_(f"index {self.folder} is open for reading only",
                              hint="open it with VectorIndex.open_for_writing to change it")

    # --- updating ------------------------------------------------------------------------------

    def plan_update(self, states: Sequence[FileState]) -> UpdatePlan:
        """Sort scanned files by the work they need; hashes only new files and files whose
        (size, mtime_ns) changed."""
        by_path = {state.path: state for state in states}  # a path listed twice is planned once
        failures = [(path, "file name is not valid UTF-8; rename it to index it")
                    for path in by_path if not _is_storable(path)]
        paths = [path for path in by_path if _is_storable(path)]
        stored = _stored_states(self._conn, paths)
        unchanged, changed = [], []
        for path in paths:
            old = stored.get(path)
            same = old is not None and (old[0], old[1]) == (by_path[path].size, by_path[path].mtime_ns)
            (unchanged if same else changed).append(path)
        with ThreadPoolExecutor(HASH_THREADS) as pool:
            hashed = list(zip(changed, pool.map(_try_hash, changed)))
        failures += [(path, reason) for path, (_, reason) in hashed if reason is not None]
        digests = [(path, digest) for path, (digest, _) in hashed if digest is not None]
        known = _rows_for_hashes(self._conn, [digest for _, digest in digests])
        return UpdatePlan(unchanged=tuple(unchanged),
                          reusable=tuple(pair for pair in digests if pair[1] in known),
                          to_embed=tuple(pair for pair in digests if pair[1] not in known),
                          hash_failures=tuple(failures))

    def add(self, entries: Sequence[tuple[FileState, str, np.ndarray | None, int | None, int | None]]) -> None:
        """Store (state, content_hash, vector or None, width, height) entries in one transaction,
        replacing rows for the same paths. None reuses the stored vector for that hash; a vector for a
        hash that already has one is ignored (same bytes, same model: same vector)."""
        self._require_writer()
        entries = list(entries)
        for state, _, _, _, _ in entries:
            if not _is_storable(state.path):
                raise ValueError(f"cannot index {state.path!r}: the file name is not valid UTF-8")
        rows = _rows_for_hashes(self._conn, list({digest for _, digest, _, _, _ in entries}))
        new_hashes, new_vectors, new_paths = [], [], []
        for state, digest, vector, _, _ in entries:
            if digest in rows:
                continue
            if vector is None:
                raise ValueError(f"no stored vector for content {digest} ({state.path}); pass its vector")
            if np.shape(vector) != (self.dim,):
                raise ValueError(f"the vector for {state.path} has shape {np.shape(vector)}, not ({self.dim},)")
            rows[digest] = self._next_row + len(new_hashes)
            new_hashes.append(digest)
            new_vectors.append(vector)
            new_paths.append(state.path)
        with _write_errors(self.folder):
            if new_vectors:
                self._append(_normalised(np.stack(new_vectors), self.dim, new_paths))
            with _transaction(self._conn):
                self._conn.executemany("INSERT INTO vectors (row, content_hash) VALUES (?, ?)",
                                       [(rows[digest], digest) for digest in new_hashes])
                self._conn.executemany(_UPSERT_FILE, [(s.path, s.size, s.mtime_ns, digest, rows[digest], width,
                                                       height) for s, digest, _, width, height in entries])
        self._snapshot_cache = None

    def _append(self, vectors: np.ndarray) -> None:
        """Write (N, D) rows at the end and fsync them: the commit that refers to them comes after."""
        assert self._file is not None  # set by open_for_writing, the only way to get a writer
        data = np.ascontiguousarray(vectors, dtype=_VECTOR_DTYPE)
        offset = self._next_row * self.dim * _VECTOR_DTYPE.itemsize
        fd = self._file.fileno()
        try:
            # Straight to the file, no buffer: a full disk fails here, not at a later flush (or in close).
            _write_all(fd, memoryview(data).cast("B"), offset)
            os.fsync(fd)
        except BaseException:
            with suppress(OSError):  # best effort: the next writer truncates a partial row anyway
                os.ftruncate(fd, offset)
            raise
        self._next_row += len(data)

    def remove_missing(self, seen_paths: Iterable[str], under: Sequence[str]) -> int:
        """Forget files inside the `under` folders that a complete scan did not see; returns how many.
        Call only after a complete scan: an interrupted one would forget files that still exist."""
        self._require_writer()
        seen = set(seen_paths)
        doomed = [path for path in self._paths_under(under) if path not in seen]
        return self._delete(doomed)

    def remove_paths(self, paths: Iterable[str]) -> int:
        self._require_writer()
        return self._delete([os.path.abspath(path) for path in paths])

    def _paths_under(self, under: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for folder in _folders(under):
            exact, lo, hi = _prefix_range(folder)
            found.update(p for (p,) in self._conn.execute("SELECT path FROM files WHERE path = ?", (exact,)))
            found.update(p for (p,) in self._conn.execute("SELECT path FROM files WHERE path >= ? AND path < ?",
                                                          (lo, hi)))
        return found

    def _delete(self, paths: list[str]) -> int:
        with _write_errors(self.folder), _transaction(self._conn):
            cursor = self._conn.executemany("DELETE FROM files WHERE path = ?", [(p,) for p in paths])
        self._snapshot_cache = None
        return max(cursor.rowcount, 0)

    def merge_from(self, other: VectorIndex) -> MergeCounts:
        """Add every file of `other` (a shard's index, built with the same model) to this one, in chunks.
        A path both hold keeps the entry with the newer mtime; on equal mtimes `other`'s wins, so
        merging shards in order lets the last shard win. Nothing is removed: shards only add."""
        self._require_writer()
        if (other.model_key, other.dim) != (self.model_key, self.dim):
            old, new = _describe(_Meta(self.model_key, self.dim, 0), other.model_key, other.dim)
            raise IndexModelMismatchError(f"cannot merge {other.folder} (built with {new}) into {self.folder} "
                                          f"(built with {old})", hint="merge only shards built with the same --model")
        snapshot = other._snapshot()
        added = replaced = unchanged = kept = 0
        for start in range(0, len(snapshot.paths), _SQL_BATCH):
            paths = snapshot.paths[start:start + _SQL_BATCH]
            theirs = other._stored_entries(paths)
            ours = _stored_states(self._conn, paths)
            entries = []
            for path in paths:
                if path not in theirs:
                    continue  # removed from the shard since the snapshot: a writer is still at work on it
                size, mtime_ns, digest, width, height, row = theirs[path]
                if row >= len(snapshot.vectors):
                    continue  # re-embedded after the snapshot was mapped: merge it on the next run
                if ours.get(path) == (size, mtime_ns, digest):
                    unchanged += 1
                    continue
                if path in ours and ours[path][1] > mtime_ns:
                    kept += 1
                    continue
                # The row read with the digest, not the snapshot's: if a writer changed the file in
                # between, the vector still belongs to the digest stored with it.
                vector = np.asarray(snapshot.vectors[row], dtype=np.float32)
                entries.append((FileState(path, size, mtime_ns), digest, vector, width, height))
                added += path not in ours
                replaced += path in ours
            self.add(entries)
        return MergeCounts(added, replaced, unchanged, kept)

    def _stored_entries(self, paths: Sequence[str]) -> dict[str, tuple]:
        """path -> (size, mtime_ns, content_hash, width, height, row)."""
        found: dict[str, tuple] = {}
        for batch in _batches(paths):
            marks = ",".join("?" * len(batch))
            query = f"SELECT path, size, mtime_ns, content_hash, width, height, row FROM files WHERE path IN ({marks})"
            found.update((row[0], row[1:]) for row in self._conn.execute(query, batch))
        return found

    def known_paths(self) -> set[str]:
        return {path for (path,) in self._conn.execute("SELECT path FROM files")}

    # --- searching -----------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int = 10, threshold: float | None = None,
               under: Sequence[str] | None = None) -> list[list[Hit]]:
        """Exact cosine search: for each query (row of (Q, D), or one (D,) vector) its k best files,
        best first. Files sharing content are separate hits; `under` keeps files inside those folders."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        q = _normalised(np.atleast_2d(queries), self.dim)
        snapshot = self._snapshot()
        entries = snapshot.by_row if under is None else _entries_under(snapshot, under)
        if len(entries) == 0:
            return [[] for _ in range(len(q))]
        query, scores, entry = _candidates(snapshot, entries, q, k, self._scratch(len(entries)))
        return [_best_hits(scores[query == i], entry[query == i], snapshot.paths, k, threshold)
                for i in range(len(q))]

    def _scratch(self, rows: int) -> torch.Tensor:
        """The float32 chunk buffer, kept between searches: faulting in fresh pages for it on every
        query costs about as much as the arithmetic."""
        import torch  # lazily: only search needs it. It converts float16 several times faster than numpy.

        rows = min(rows, max(1, SEARCH_BUFFER_BYTES // (self.dim * 4)))
        if self._buffer is None or self._buffer.shape[0] < rows:
            self._buffer = torch.empty((rows, self.dim))  # (C, D) float32
        return self._buffer[:rows]

    def _snapshot(self) -> _Snapshot:
        # data_version changes whenever another connection commits, so a long-lived reader still sees
        # new rows; the writer's own commits reset the cache instead.
        version = self._conn.execute("PRAGMA data_version").fetchone()[0]
        if self._snapshot_cache is None or self._snapshot_cache.data_version != version:
            self._snapshot_cache = self._load_snapshot(version)
        return self._snapshot_cache

    def _load_snapshot(self, version: int) -> _Snapshot:
        for _ in range(_SNAPSHOT_TRIES):
            with _transaction(self._conn, "BEGIN"):  # meta and rows from one committed state
                meta = _read_meta(self._conn, self.folder)
                pairs = self._conn.execute("SELECT path, row FROM files ORDER BY path").fetchall()
            if (meta.model_key, meta.dim) != (self.model_key, self.dim):
                raise IndexModelMismatchError(f"index {self.folder} was rebuilt with {meta.model_key} while open",
                                              hint="open it again")
            try:
                vectors = _map_vectors(self.folder / _vectors_file_name(meta.generation), self.dim)
            except FileNotFoundError:
                continue  # a rebuild or compact replaced the file after our snapshot; take a new one
            rows = np.fromiter((row for _, row in pairs), dtype=np.int64, count=len(pairs))
            if len(rows) and rows.max() >= len(vectors):
                raise self._damaged(f"row {rows.max()} is in use but the vector file has {len(vectors)} rows")
            return _Snapshot(version, [path for path, _ in pairs], rows, np.argsort(rows, kind="stable"), vectors)
        raise self._damaged("its vector file keeps disappearing")

    # --- maintenance ---------------------------------------------------------------------------

    def stats(self) -> IndexStats:
        with _transaction(self._conn, "BEGIN"):
            meta = _read_meta(self._conn, self.folder)
            files = self._conn.execute("SELECT count(*) FROM files").fetchone()[0]
            vectors = self._conn.execute("SELECT count(*) FROM vectors").fetchone()[0]
        names = (DB_NAME, DB_NAME + "-wal", _vectors_file_name(meta.generation))
        size = sum((self.folder / name).stat().st_size for name in names if (self.folder / name).exists())
        return IndexStats(files, vectors, meta.dim, meta.model_key, size)

    def compact(self) -> None:
        """Rewrite the vector file with only the rows files refer to, dropping garbage and vectors kept
        for reuse. The new file gets a new name and the same commit switches to it, so readers with an
        older snapshot keep a consistent (old) file."""
        self._require_writer()
        live = np.array([row for (row,) in self._conn.execute("SELECT DISTINCT row FROM files ORDER BY row")],
                        dtype=np.int64)
        stored = self._conn.execute("SELECT count(*) FROM vectors").fetchone()[0]
        if stored == len(live) == self._next_row and np.array_equal(live, np.arange(len(live))):
            return  # nothing to reclaim
        old_path = self.folder / _vectors_file_name(self._generation)
        new_path = self.folder / _vectors_file_name(self._generation + 1)
        with _write_errors(self.folder):
            try:
                _copy_rows(old_path, new_path, live, self.dim)
            except BaseException:
                new_path.unlink(missing_ok=True)  # a half-written copy nothing refers to
                raise
            _fsync_dir(self.folder)
            with _transaction(self._conn):
                _renumber(self._conn, live)
                _write_meta(self._conn, _Meta(self.model_key, self.dim, self._generation + 1))
        self._generation += 1
        self._file.close()
        self._open_vector_file()  # also deletes the old file
        self._snapshot_cache = None

    def close(self) -> None:
        file, self._file = self._file, None
        try:
            if file is not None:
                with _write_errors(self.folder):
                    file.close()
        finally:  # the database and the lock are released whatever the vector file says
            self._conn.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = None
            self._snapshot_cache = None
            self._buffer = None

    def __enter__(self) -> VectorIndex:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.close()
            return
        with suppress(IndexError_):  # the exception already on its way out says what went wrong; keep it
            self.close()


def _write_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written


def _copy_rows(source: Path, target: Path, rows: np.ndarray, dim: int) -> None:
    vectors = _map_vectors(source, dim)
    with open(target, "wb") as f:
        step = max(1, SEARCH_BUFFER_BYTES // (dim * _VECTOR_DTYPE.itemsize))
        for start in range(0, len(rows), step):
            f.write(np.ascontiguousarray(vectors[rows[start:start + step]]).tobytes())
        f.flush()
        os.fsync(f.fileno())


def _renumber(conn: sqlite3.Connection, live: np.ndarray) -> None:
    """Give the live rows numbers 0..n-1 in order and drop every other vector row."""
    conn.execute("CREATE TEMP TABLE remap (old INTEGER PRIMARY KEY, new INTEGER NOT NULL)")
    conn.executemany("INSERT INTO remap (old, new) VALUES (?, ?)", ((int(old), new) for new, old in enumerate(live)))
    # Renumbering in place could collide with a row not yet renumbered; rebuilding the table cannot.
    conn.execute("CREATE TEMP TABLE kept AS SELECT r.new AS row, v.content_hash FROM vectors v JOIN remap r ON r.old = v.row")
    conn.execute("DELETE FROM vectors")
    conn.execute("INSERT INTO vectors (row, content_hash) SELECT row, content_hash FROM kept")
    conn.execute("UPDATE files SET row = (SELECT new FROM remap WHERE old = files.row)")
    conn.execute("DROP TABLE remap")
    conn.execute("DROP TABLE kept")
