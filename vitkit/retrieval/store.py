"""Reading an index folder (any number of readers, no lock); writer.py adds the one writer, holding the lock.

An index folder holds:
  index.sqlite   what each file is (see schema.py), in WAL mode so readers never wait for the writer
  vectors.f16    the vector rows (see vectors.py)
  index.lock     the writer's flock (see lock.py)
  ann.faiss      the approximate index, derived (see ann.py); ann.lock is held while it is saved

Crash safety rests on one ordering: vector bytes are fsynced before the SQLite transaction that refers
to their rows commits. A kill at any moment leaves either rows nothing refers to (harmless garbage) or
a partial trailing row (truncated by the next writer), never a reference to bytes that are not there.
Readers touch only rows their SQLite snapshot refers to, so they can search while a writer appends.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import numpy as np

from vitkit.errors import IndexError_, IndexLockedError, IndexModelMismatchError
from vitkit.retrieval import ann, approximate, direct
from vitkit.retrieval.exact import Hit, Snapshot, search_snapshot
from vitkit.retrieval.lock import ANN_LOCK_NAME, WriterLock
from vitkit.retrieval.plan import FileState
from vitkit.retrieval.schema import (
    DB_NAME, Meta, batches, check_version, connect, damaged, has_failures_table, has_row_index, mismatch,
    no_index, open_error, paths_and_rows, read_meta, reference_for_key, transaction,
)
from vitkit.retrieval.vectors import VECTOR_DTYPE, map_vectors, normalised, vectors_file_name

_SNAPSHOT_TRIES = 3
T = TypeVar("T")


@dataclass(frozen=True)
class Entry:
    """One file's row: the file as it was when indexed, its content hash, and (when adding) its vector."""

    state: FileState
    content_hash: str
    vector: np.ndarray | None = None  # (D,); None reuses the vector stored for content_hash
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class Failure:
    """A file the model could not use, as it was when it failed; skipped until its size or mtime changes."""

    path: str
    size: int
    mtime_ns: int
    reason: str


@dataclass(frozen=True)
class IndexStats:
    files: int
    vectors: int  # stored vectors, one per distinct content (including ones kept for reuse until compact)
    dim: int
    model_key: str
    bytes_on_disk: int
    dead_vectors: int = 0  # rows of the vector file no file refers to; compact() drops them


def open_reader(folder: str | Path, model_key: str | None = None, model_ref: str | None = None) -> IndexReader:
    """Open for searching, without the lock: a writer may be adding to the index meanwhile. With
    `model_key`, an index made by another model is refused (`model_ref` names the asking model)."""
    folder = Path(folder)
    if not (folder / DB_NAME).is_file():
        raise no_index(folder)
    conn = None
    try:
        conn = connect(folder / DB_NAME, readonly=True)
        with transaction(conn, "BEGIN"):
            if check_version(conn, folder) == 0:
                raise no_index(folder)  # a writer died before finishing the first transaction
            meta = read_meta(conn, folder)
    except BaseException as e:
        if conn is not None:
            conn.close()
        if isinstance(e, sqlite3.DatabaseError):
            raise open_error(folder, e) from e
        raise
    index = IndexReader(folder, conn, meta)
    if model_key is not None and model_key != meta.model_key:
        index.close()
        raise mismatch(folder, meta, model_key, None, model_ref, "search")
    return index


class IndexReader:
    """One committed view of an index after another: each search sees the latest commit. Not for
    concurrent use from several threads; open one per thread instead."""

    def __init__(self, folder: Path, conn: sqlite3.Connection, meta: Meta) -> None:
        self.folder = folder
        self._conn = conn
        self._meta = meta
        self._snapshot_cache: Snapshot | None = None
        self._searched_version: int | None = None  # data_version of the last search without a snapshot
        self._ann_cache: approximate.AnnView | None = None
        self._rows_cache: direct.RowsView | None = None
        self._mapped: tuple[int, np.ndarray] | None = None  # (generation, its vector file mapped)
        self._row_index = has_row_index(conn)  # else (an index no writer has opened since) snapshots serve
        self.warn: Callable[[str], None] = _warn_on_stderr  # search sets the command's reporter instead

    @property
    def model_key(self) -> str:
        return self._meta.model_key

    @property
    def dim(self) -> int:
        return self._meta.dim

    @property
    def model_ref(self) -> str:
        """A --model value that names the model that built the index (its alias or folder)."""
        return self._meta.model_ref or reference_for_key(self._meta.model_key)

    def search(self, queries: np.ndarray, k: int = 10, threshold: float | None = None,
               under: Sequence[str] | None = None, exact: bool = False) -> list[list[Hit]]:
        """Cosine search: for each query (row of (Q, D), or one (D,) vector) its k best files, best
        first. Files sharing content are separate hits; `under` keeps files inside those folders.
        Approximate (re-ranked exactly) on big indexes unless `exact`; see approximate.py."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        q = normalised(np.atleast_2d(queries), self.dim)
        if under is None and self._row_index:
            hits = self._search_by_rows(q, k, threshold, exact)
            if hits is not None:
                return hits
        version = self._conn.execute("PRAGMA data_version").fetchone()[0]
        if not exact and self._file_count(version) >= approximate.ann_min_files():
            snapshot = self._snapshot()
            hits = approximate.search(snapshot, self._ann_view(snapshot), q, k, threshold, under)
            if hits is not None:
                return hits
        # Checked after the ANN attempt: a snapshot it loaded (for a small folder restriction) serves the
        # exact search directly instead of a second pass through SQLite.
        cached = self._snapshot_cache is not None and self._snapshot_cache.data_version == version
        if len(q) == 1 and not cached and self._searched_version != version:
            # A folder restriction (or an index without the row index): the first search of a committed
            # state asks SQLite for the few files it needs instead of loading every path (~0.5 s at 1M
            # files); the next search loads them, for the cheap folder ranges of a sorted list.
            self._searched_version = version
            with transaction(self._conn, "BEGIN"):
                vectors = self._vectors_of(read_meta(self._conn, self.folder))
                if vectors is not None:  # else a rebuild or compact replaced the file: take a snapshot
                    return direct.search_exact(self._conn, vectors, q, k, threshold, under)
        return search_snapshot(self._snapshot(), q, k, threshold, under)

    def _search_by_rows(self, queries: np.ndarray, k: int, threshold: float | None,
                        exact: bool) -> list[list[Hit]] | None:
        """Search every file without a snapshot (see direct.py), in one read transaction; None when the
        snapshot's path must answer: a rebuild or compact replaced the vector file, or the ANN file
        must be rebuilt or synced (which needs every live row)."""
        with transaction(self._conn, "BEGIN"):
            meta = read_meta(self._conn, self.folder)
            size = direct.used_rows(self._conn)
            vectors = self._mapped_vectors(meta, size)
            if vectors is None:
                return None
            if not exact and size >= approximate.ann_min_files():
                version = self._conn.execute("PRAGMA data_version").fetchone()[0]
                view = self._rows_view(meta, version, size)
                if view is None:
                    return None
                hits = direct.search_ann(self._conn, vectors, view, queries, k, threshold)
                if hits is not None:
                    return hits
            return direct.search_exact(self._conn, vectors, queries, k, threshold, None)

    def _mapped_vectors(self, meta: Meta, rows: int) -> np.ndarray | None:
        """The vector file mapped once, and again only when it has grown past the map or was replaced:
        a new map per search costs its page faults again (~3 ms a search at 1M)."""
        if self._mapped is not None and self._mapped[0] == meta.generation and len(self._mapped[1]) >= rows:
            return self._mapped[1]
        vectors = self._vectors_of(meta)
        self._mapped = None if vectors is None else (meta.generation, vectors)
        return vectors

    def _rows_view(self, meta: Meta, version: int, size: int) -> direct.RowsView | None:
        """The ANN index for this committed state: the one in memory, or the saved one when it is new or
        has been saved again since; None when it cannot serve (see _search_by_rows)."""
        previous = self._rows_cache
        if previous is not None and (previous.data_version, previous.generation) == (version, meta.generation):
            return previous
        index = previous.index if previous is not None and previous.generation == meta.generation else None
        signature = ann.file_signature(self.folder)
        if index is None or signature != previous.signature:
            index = ann.load(self.folder, self.model_key, self.dim, meta.generation)[0] or index
        if index is None and self._ann_cache is not None and self._ann_cache.index.header.generation == meta.generation:
            index = self._ann_cache.index  # rebuilt from a snapshot, and not saved (a read-only folder)
        if index is None or index.needs_retraining(size):
            return None
        appended = direct.live_rows_from(self._conn, index.covers)
        if len(appended) > max(approximate.SYNC_MIN_ROWS, approximate.SYNC_FRACTION * size):
            return None
        self._rows_cache = direct.RowsView(version, meta.generation, index, appended, signature)
        return self._rows_cache

    def _forget_cached_state(self) -> None:
        """After this connection's own commit, which PRAGMA data_version does not count."""
        self._snapshot_cache = None
        if self._rows_cache is not None:  # its ANN index stays; its appended rows are read again
            self._rows_cache = replace(self._rows_cache, data_version=-1)

    def read_consistently(self, read: Callable[[Snapshot], T]) -> tuple[Snapshot, T]:
        """The latest committed state and what `read` reads of it (through this reader's methods), in
        one read transaction: the files `read` finds are the snapshot's, as they are in it."""
        for _ in range(_SNAPSHOT_TRIES):
            with transaction(self._conn, "BEGIN"):
                read_meta(self._conn, self.folder)  # the transaction's state is fixed from its first read
                try:
                    snapshot = self._snapshot()
                except _VectorFileReplaced:
                    continue
                return snapshot, read(snapshot)
        raise damaged(self.folder, "its vector file keeps disappearing")

    def snapshot(self) -> Snapshot:
        """The latest committed state: sorted paths, their vector rows and the mapped vector file
        (for code that reads the vectors themselves, such as dedup)."""
        return self._snapshot()

    def _file_count(self, version: int) -> int:
        if self._snapshot_cache is not None and self._snapshot_cache.data_version == version:
            return len(self._snapshot_cache.paths)
        return self._conn.execute("SELECT count(*) FROM files").fetchone()[0]

    def _ann_view(self, snapshot: Snapshot) -> approximate.AnnView:
        self._ann_cache = approximate.view(self.folder, snapshot, self.model_key, snapshot.generation, self.warn,
                                           self._ann_cache, self._persist_ann)
        return self._ann_cache

    def ann_index(self, snapshot: Snapshot) -> ann.AnnIndex:
        """The ANN index holding every live row of `snapshot` (for dedup's neighbour queries): the saved
        one checked and brought up to date in memory (then saved when no writer holds the lock), or
        rebuilt with a warning when missing, damaged or out of date."""
        view = self._ann_view(snapshot)
        if len(view.unindexed):
            # Search scores the few missing rows exactly per query; a query per item needs them indexed.
            view.index.sync(snapshot.vectors, np.flatnonzero(view.live_mask))
            self._persist_ann(view.index)
        return view.index

    def _persist_ann(self, index: ann.AnnIndex) -> None:
        """Save an ANN index this reader had to rebuild or sync, unless another process is saving one.
        Not when a compaction or rebuild has started a new generation since: that writer's file must
        not be replaced by one every later search would rebuild. An older file of the current generation
        is safe (see ann.py: it costs speed, never correctness)."""
        try:
            lock = WriterLock.acquire(self.folder, name=ANN_LOCK_NAME)
        except (IndexLockedError, OSError):
            return
        try:
            if read_meta(self._conn, self.folder).generation == index.header.generation:
                ann.save(self.folder, index)
        except OSError:
            pass  # a read-only index folder: searching still works, from the copy in memory
        finally:
            lock.release()

    def _snapshot(self) -> Snapshot:
        # data_version changes whenever another connection commits, so a long-lived reader still sees
        # new rows; a writer's own commits reset the cache instead.
        version = self._conn.execute("PRAGMA data_version").fetchone()[0]
        if self._snapshot_cache is None or self._snapshot_cache.data_version != version:
            self._snapshot_cache = self._load_snapshot(version)
        return self._snapshot_cache

    def _vectors_of(self, meta: Meta) -> np.ndarray | None:
        """The vector file `meta` names, mapped; None when a rebuild or compact has replaced it since."""
        if (meta.model_key, meta.dim) != (self.model_key, self.dim):
            raise IndexModelMismatchError(f"index {self.folder} was rebuilt with {meta.model_key} while open",
                                          hint="open it again")
        try:
            return map_vectors(self.folder / vectors_file_name(meta.generation), self.dim)
        except FileNotFoundError:
            return None

    def _load_snapshot(self, version: int) -> Snapshot:
        for _ in range(_SNAPSHOT_TRIES):
            with transaction(self._conn, "BEGIN"):  # meta and rows from one committed state
                meta = read_meta(self._conn, self.folder)
                paths, rows = paths_and_rows(self._conn)
            vectors = self._vectors_of(meta)
            if vectors is None:
                if self._conn.in_transaction:  # the caller's transaction would show the same state again
                    raise _VectorFileReplaced
                continue  # a rebuild or compact replaced the file after our snapshot; take a new one
            if len(rows) and rows.max() >= len(vectors):
                raise damaged(self.folder, f"row {rows.max()} is in use but the vector file has {len(vectors)} rows")
            return Snapshot(version, paths, rows, np.argsort(rows, kind="stable"), vectors, meta.generation)
        raise damaged(self.folder, "its vector file keeps disappearing")

    def stats(self) -> IndexStats:
        with transaction(self._conn, "BEGIN"):
            meta = read_meta(self._conn, self.folder)
            files = self._conn.execute("SELECT count(*) FROM files").fetchone()[0]
            vectors = self._conn.execute("SELECT count(*) FROM vectors").fetchone()[0]
            live = self._conn.execute("SELECT count(DISTINCT row) FROM files").fetchone()[0]
        names = (DB_NAME, DB_NAME + "-wal", vectors_file_name(meta.generation), ann.ANN_NAME)
        sizes = {name: (self.folder / name).stat().st_size for name in names if (self.folder / name).exists()}
        rows = sizes.get(vectors_file_name(meta.generation), 0) // (meta.dim * VECTOR_DTYPE.itemsize)
        return IndexStats(files, vectors, meta.dim, meta.model_key, sum(sizes.values()), max(rows - live, 0))

    def known_paths(self) -> set[str]:
        return {path for (path,) in self._conn.execute("SELECT path FROM files")}

    def stored_states(self, paths: Sequence[str]) -> dict[str, tuple[int, int, str]]:
        """path -> (size, mtime_ns, content_hash) for the given paths that the index holds."""
        found: dict[str, tuple[int, int, str]] = {}
        for batch in batches(paths):
            marks = ",".join("?" * len(batch))
            query = f"SELECT path, size, mtime_ns, content_hash FROM files WHERE path IN ({marks})"
            found.update((path, (size, mtime, digest)) for path, size, mtime, digest in self._conn.execute(query, batch))
        return found

    def stored_entries(self, paths: Sequence[str]) -> dict[str, tuple[Entry, int]]:
        """path -> (entry without vector, vector row) for the given paths that the index holds."""
        found: dict[str, tuple[Entry, int]] = {}
        for batch in batches(paths):
            marks = ",".join("?" * len(batch))
            query = f"SELECT path, size, mtime_ns, content_hash, width, height, row FROM files WHERE path IN ({marks})"
            for path, size, mtime_ns, digest, width, height, row in self._conn.execute(query, batch):
                found[path] = (Entry(FileState(path, size, mtime_ns), digest, None, width, height), row)
        return found

    def rows_for_hashes(self, hashes: Sequence[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for batch in batches(hashes):
            marks = ",".join("?" * len(batch))
            found.update(self._conn.execute(f"SELECT content_hash, row FROM vectors WHERE content_hash IN ({marks})",
                                            batch))
        return found

    def remembered_failures(self, paths: Sequence[str]) -> dict[str, tuple[int, int]]:
        """path -> (size, mtime_ns) as it was when it failed, for the given paths."""
        if not has_failures_table(self._conn):
            return {}
        found: dict[str, tuple[int, int]] = {}
        for batch in batches(paths):
            marks = ",".join("?" * len(batch))
            query = f"SELECT path, size, mtime_ns FROM failures WHERE path IN ({marks})"
            found.update((path, (size, mtime)) for path, size, mtime in self._conn.execute(query, batch))
        return found

    def failures(self) -> list[Failure]:
        """Every remembered failure, by path."""
        if not has_failures_table(self._conn):
            return []
        query = "SELECT path, size, mtime_ns, reason FROM failures ORDER BY path"
        return [Failure(*row) for row in self._conn.execute(query)]

    def close(self) -> None:
        self._conn.close()
        self._snapshot_cache = None
        self._ann_cache = None
        self._rows_cache = None
        self._mapped = None

    def __enter__(self) -> IndexReader:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class _VectorFileReplaced(Exception):
    """A rebuild or compact replaced the vector file that a read transaction's state names."""


def _warn_on_stderr(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr)


def index_exists(folder: str | Path) -> bool:
    """Whether the folder holds a finished index (a writer may still be creating one)."""
    try:
        open_reader(folder).close()
    except IndexError_:  # no index, not an index, newer schema: opening it to write says which
        return False
    return True
