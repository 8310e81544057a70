"""The one writer of an index: adds, removes, merges and compacts, holding the folder's lock throughout."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from vitkit.errors import IndexError_, IndexModelMismatchError
from vitkit.retrieval import ann
from vitkit.retrieval.approximate import ann_min_files
from vitkit.retrieval.exact import folders, prefix_range
from vitkit.retrieval.lock import ANN_LOCK_NAME, WriterLock
from vitkit.retrieval.plan import FileState, UpdatePlan, is_storable, plan_update
from vitkit.retrieval.schema import (
    DB_NAME, SQL_BATCH, Meta, check_version, connect, create_row_index, create_schema, damaged, migrate, mismatch,
    no_index, open_error, read_meta, transaction, write_errors, write_meta,
)
from vitkit.retrieval.store import Entry, Failure, IndexReader
from vitkit.retrieval.vectors import (
    VECTOR_DTYPE, VectorFile, copy_rows, create_empty, fsync_dir, map_vectors, normalised, remove_other_generations,
    vectors_file_name,
)

DEAD_FRACTION_TO_COMPACT = 0.5  # after an update, compact once more than this share of the vector file is dead
ANN_SAVE_WAIT_SECONDS = 120.0  # a search saving the ANN file holds its lock for about a second at 1M rows

_UPSERT_FILE = """INSERT INTO files (path, size, mtime_ns, content_hash, row, width, height)
    VALUES (?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns,
        content_hash = excluded.content_hash, row = excluded.row, width = excluded.width, height = excluded.height"""
_UPSERT_FAILURE = """INSERT INTO failures (path, size, mtime_ns, reason) VALUES (?, ?, ?, ?)
    ON CONFLICT (path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns, reason = excluded.reason"""


@dataclass(frozen=True)
class MergeCounts:
    added: int  # paths new to the target
    replaced: int  # paths the target held with an older (or equal) mtime and other content or size
    unchanged: int  # paths the target already held exactly so
    kept: int  # paths the target held with a newer mtime: its entry stays


def open_writer(folder: str | Path, model_key: str, dim: int | None = None, *, model_ref: str | None = None,
                rebuild: bool = False, wait_seconds: float = 0.0) -> IndexWriter:
    """Open (creating if missing) for adding and removing; one writer at a time per folder. dim=None
    takes the index's own (it must exist): planning needs no model, so the model's dim may be unknown."""
    if not model_key or (dim is not None and dim < 1) or (dim is None and rebuild):
        raise ValueError(f"an index needs a model key and a positive dim, got {model_key!r}, {dim}")
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise IndexError_(f"cannot create index folder {folder}: {e.strerror}",
                          hint="check the path and its permissions") from None
    with write_errors(folder):
        lock = WriterLock.acquire(folder, wait_seconds)
    conn = None
    try:
        conn = connect(folder / DB_NAME, readonly=False)
        meta = _prepare(conn, folder, Meta(model_key, dim or 0, 0, model_ref), rebuild, dim is None)
    except BaseException as e:
        if conn is not None:
            conn.close()
        lock.release()
        if isinstance(e, sqlite3.DatabaseError):
            raise open_error(folder, e) from e
        raise
    if rebuild:
        (folder / ann.ANN_NAME).unlink(missing_ok=True)  # it describes vectors that are gone, maybe another model's
    index = IndexWriter(folder, conn, meta, lock)
    try:
        with write_errors(folder):
            index._open_vector_file()
    except BaseException:
        index.close()
        raise
    return index


def _prepare(conn: sqlite3.Connection, folder: Path, wanted: Meta, rebuild: bool, any_dim: bool) -> Meta:
    """Create, migrate, check or reset the schema in one transaction; returns the meta to write with."""
    conn.execute("PRAGMA journal_mode = WAL")  # persistent in the file; must run outside a transaction
    with transaction(conn):
        version = check_version(conn, folder)
        if version == 0:
            if any_dim:
                raise no_index(folder)
            create_schema(conn, folder, wanted)
            meta = wanted
        else:
            meta = read_meta(conn, folder)
            migrate(conn, version)
            if rebuild:
                meta = _reset(conn, meta, wanted)
            elif meta.model_key != wanted.model_key or (meta.dim != wanted.dim and not any_dim):
                raise mismatch(folder, meta, wanted.model_key, wanted.dim, wanted.model_ref, "update it")
            elif wanted.model_ref and wanted.model_ref != meta.model_ref:
                meta = replace(meta, model_ref=wanted.model_ref)  # the latest name that worked; older indexes had none
                write_meta(conn, meta)
        create_row_index(conn)
        create_empty(folder, meta.generation)
    return meta


def _reset(conn: sqlite3.Connection, meta: Meta, wanted: Meta) -> Meta:
    # A new, empty vector file rather than truncating the old one: readers may have the old one mapped
    # (touching truncated pages kills them with SIGBUS) and their snapshots still point into it.
    for table in ("files", "vectors", "failures"):  # a new model may well read what the old one failed on
        conn.execute(f"DELETE FROM {table}")
    new = replace(wanted, generation=meta.generation + 1)
    write_meta(conn, new)
    return new


class IndexWriter(IndexReader):
    """An index open for writing: everything a reader does, plus changing it. Holds the lock until close()."""

    def __init__(self, folder: Path, conn: sqlite3.Connection, meta: Meta, lock: WriterLock) -> None:
        super().__init__(folder, conn, meta)
        self._lock: WriterLock | None = lock
        self._file: VectorFile | None = None
        self._changed = False  # since opening: the ANN index must follow when closing
        self._opened_generation = meta.generation

    def _open_vector_file(self) -> None:
        """Take row numbers from the live file's length, and delete files a rebuild or compact left behind."""
        self._file = VectorFile(self.folder / vectors_file_name(self._meta.generation), self.dim)
        highest = self._conn.execute("SELECT max(row) FROM vectors").fetchone()[0]
        if highest is not None and highest >= self._file.rows:
            raise damaged(self.folder, f"{self._file.path.name} has {self._file.rows} rows but row {highest} is in use")
        remove_other_generations(self.folder, self._file.path.name)

    def plan_update(self, states: Sequence[FileState]) -> UpdatePlan:
        return plan_update(self, states)

    def add(self, entries: Iterable[Entry]) -> None:
        """Store entries in one transaction, replacing rows for the same paths (and forgetting their
        failures). A vector for a hash that already has one is ignored (same bytes, same model)."""
        entries = list(entries)
        for entry in entries:
            if not is_storable(entry.state.path):
                raise ValueError(f"cannot index {entry.state.path!r}: the file name is not valid UTF-8")
        rows = self.rows_for_hashes(list({entry.content_hash for entry in entries}))
        sizes = self._pixel_sizes({entry.content_hash for entry in entries if entry.width is None})
        revived = self._rows_without_files(rows)
        new: list[Entry] = []
        for entry in entries:
            if entry.content_hash in rows:
                continue
            if entry.vector is None:
                raise ValueError(f"no stored vector for content {entry.content_hash} ({entry.state.path}); pass its vector")
            if np.shape(entry.vector) != (self.dim,):
                raise ValueError(f"the vector for {entry.state.path} has shape {np.shape(entry.vector)}, not ({self.dim},)")
            rows[entry.content_hash] = self._file.rows + len(new)
            new.append(entry)
        appended = [normalised(np.stack([e.vector for e in new]), self.dim, [e.state.path for e in new])] if new else []
        if revived:
            # Stored bytes copied as they are (float16), so a revived file scores exactly as before.
            appended.append(np.asarray(map_vectors(self._file.path, self.dim)[list(revived.values())]))
            rows.update((digest, self._file.rows + len(new) + i) for i, digest in enumerate(revived))
        with write_errors(self.folder):
            if appended:
                self._file.append(np.concatenate([block.astype(VECTOR_DTYPE) for block in appended]))
            with transaction(self._conn):
                self._conn.executemany("INSERT INTO vectors (row, content_hash) VALUES (?, ?)",
                                       [(rows[e.content_hash], e.content_hash) for e in new])
                self._conn.executemany("UPDATE vectors SET row = ? WHERE content_hash = ?",
                                       [(rows[digest], digest) for digest in revived])
                self._conn.executemany(_UPSERT_FILE, [(e.state.path, e.state.size, e.state.mtime_ns, e.content_hash,
                                                       rows[e.content_hash],
                                                       *((e.width, e.height) if e.width is not None
                                                         else sizes.get(e.content_hash, (None, None))))
                                                      for e in entries])
                self._conn.executemany("DELETE FROM failures WHERE path = ?", [(e.state.path,) for e in entries])
        self._forget_cached_state()
        self._changed = self._changed or bool(entries)

    def _rows_without_files(self, rows: dict[str, int]) -> dict[str, int]:
        """content hash -> its stored row, for the rows no file refers to. Content that comes back gets
        a new row (a copy of its vector) instead: within a generation a dead row stays dead, so the ANN
        file's rows plus the rows past it are every live row (see direct.py), without a scan."""
        if not rows:
            return {}
        found = self._conn.execute("SELECT DISTINCT row FROM files WHERE row IN (SELECT value FROM json_each(?))",
                                   (json.dumps(sorted(rows.values())),)).fetchall()
        live = {row for (row,) in found}
        return {digest: row for digest, row in rows.items() if row not in live}

    def _pixel_sizes(self, hashes: set[str]) -> dict[str, tuple[int, int]]:
        """content hash -> (width, height) as another file with that content has them. An entry reusing
        known content (a renamed, touched or copied file) comes without its size, and dedup's --keep
        largest needs it. One pass over `files` for all of them: it has no index by content hash."""
        if not hashes:
            return {}
        found = self._conn.execute(
            "SELECT content_hash, width, height FROM files WHERE width IS NOT NULL AND height IS NOT NULL "
            "AND content_hash IN (SELECT value FROM json_each(?))", (json.dumps(sorted(hashes)),)).fetchall()
        return {digest: (width, height) for digest, width, height in found}

    def record_failures(self, failures: Iterable[Failure]) -> None:
        """Remember files the model could not use, so later runs skip them until they change."""
        rows = [(f.path, f.size, f.mtime_ns, f.reason) for f in failures if is_storable(f.path)]
        with write_errors(self.folder), transaction(self._conn):
            self._conn.executemany(_UPSERT_FAILURE, rows)

    def remove_missing(self, seen_paths: Iterable[str], under: Sequence[str],
                       failing_paths: Iterable[str] = ()) -> int:
        """Forget files inside the `under` folders that a complete scan did not see, and failures not in
        `failing_paths`; returns how many files. Call only after a complete scan: an interrupted one
        would forget files that still exist."""
        seen, failing = set(seen_paths), set(failing_paths)
        doomed = [path for path in self._paths_under("files", under) if path not in seen]
        cleared = [path for path in self._paths_under("failures", under) if path not in failing]
        with write_errors(self.folder), transaction(self._conn):
            self._conn.executemany("DELETE FROM failures WHERE path = ?", [(p,) for p in cleared])
            removed = self._conn.executemany("DELETE FROM files WHERE path = ?", [(p,) for p in doomed]).rowcount
        self._forget_cached_state()
        self._changed = self._changed or bool(doomed)
        return max(removed, 0)

    def remove_paths(self, paths: Iterable[str]) -> int:
        with write_errors(self.folder), transaction(self._conn):
            cursor = self._conn.executemany("DELETE FROM files WHERE path = ?", [(os.path.abspath(p),) for p in paths])
        self._forget_cached_state()
        self._changed = True
        return max(cursor.rowcount, 0)

    def _paths_under(self, table: str, under: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for folder in folders(under):
            exact, lo, hi = prefix_range(folder)
            found.update(p for (p,) in self._conn.execute(f"SELECT path FROM {table} WHERE path = ?", (exact,)))
            found.update(p for (p,) in self._conn.execute(f"SELECT path FROM {table} WHERE path >= ? AND path < ?",
                                                          (lo, hi)))
        return found

    def merge_from(self, other: IndexReader) -> MergeCounts:
        """Add every file of `other` (a shard's index, built with the same model) to this one, in chunks.
        A path both hold keeps the entry with the newer mtime; on equal mtimes `other`'s wins, so
        merging shards in order lets the last shard win. Nothing is removed: shards only add."""
        if (other.model_key, other.dim) != (self.model_key, self.dim):
            raise IndexModelMismatchError(
                f"cannot merge {other.folder} (built with {other.model_key}, dim {other.dim}) into {self.folder} "
                f"(built with {self.model_key}, dim {self.dim})",
                hint="merge only shards built with the same --model (model= in Python)")
        snapshot = other._snapshot()
        added = replaced = unchanged = kept = 0
        for start in range(0, len(snapshot.paths), SQL_BATCH):
            paths = snapshot.paths[start:start + SQL_BATCH]
            theirs = other.stored_entries(paths)
            ours = self.stored_states(paths)
            entries = []
            for path in paths:
                if path not in theirs:
                    continue  # removed from the shard since the snapshot: a writer is still at work on it
                entry, row = theirs[path]
                if row >= len(snapshot.vectors):
                    continue  # re-embedded after the snapshot was mapped: merge it on the next run
                if ours.get(path) == (entry.state.size, entry.state.mtime_ns, entry.content_hash):
                    unchanged += 1
                    continue
                if path in ours and ours[path][1] > entry.state.mtime_ns:
                    kept += 1
                    continue
                # The row read with the digest, not the snapshot's: if a writer changed the file in
                # between, the vector still belongs to the digest stored with it.
                entries.append(replace(entry, vector=np.asarray(snapshot.vectors[row], dtype=np.float32)))
                added += path not in ours
                replaced += path in ours
            self.add(entries)
        return MergeCounts(added, replaced, unchanged, kept)

    def compact(self) -> int:
        """Rewrite the vector file with only the rows files refer to; returns how many rows it dropped.
        The copy gets a new name and one commit switches to it, so a kill at any point leaves the old
        file or the new one in use (the other is deleted by the next writer), and readers with an
        older snapshot keep a consistent (old) file."""
        live = np.array([row for (row,) in self._conn.execute("SELECT DISTINCT row FROM files ORDER BY row")],
                        dtype=np.int64)
        stored = self._conn.execute("SELECT count(*) FROM vectors").fetchone()[0]
        total = self._file.rows
        if stored == len(live) == total and np.array_equal(live, np.arange(len(live))):
            return 0
        new_meta = replace(self._meta, generation=self._meta.generation + 1)
        new_path = self.folder / vectors_file_name(new_meta.generation)
        with write_errors(self.folder):
            copy_rows(self._file.path, new_path, live, self.dim)
            fsync_dir(self.folder)
            try:
                with transaction(self._conn):
                    renumber_rows(self._conn, live)
                    write_meta(self._conn, new_meta)
            except BaseException:
                new_path.unlink(missing_ok=True)  # a complete copy nothing refers to
                raise
        self._meta = new_meta
        self._changed = True
        self._file.close()
        self._file = None
        self._forget_cached_state()
        with write_errors(self.folder):
            self._open_vector_file()  # also deletes the old file
        return total - len(live)

    def compact_if_mostly_dead(self, fraction: float = DEAD_FRACTION_TO_COMPACT) -> int:
        """compact() when more than `fraction` of the vector file's rows are dead; returns rows dropped."""
        live = self._conn.execute("SELECT count(DISTINCT row) FROM files").fetchone()[0]
        if self._file.rows and self._file.rows - live > fraction * self._file.rows:
            return self.compact()
        return 0

    def sync_ann(self) -> None:
        """Bring the ANN index beside SQLite in line with the committed files (incrementally: the
        trained quantisers stay), when the index is big enough to search approximately."""
        snapshot = self._snapshot()
        # Both measures: the snapshot's searches count files, the first searches of a reader count rows.
        if not snapshot.paths or max(len(snapshot.paths), int(snapshot.rows.max()) + 1) < ann_min_files():
            return
        # After this writer's own compaction or rebuild the old ANN file is expectedly out of date.
        expected = self._meta.generation != self._opened_generation
        with write_errors(self.folder):
            index, changed = ann.ensure(self.folder, snapshot.vectors, ann.live_rows(snapshot.rows), self.model_key,
                                        self._meta.generation, (lambda _: None) if expected else self.warn,
                                        warn_missing=False)
            if changed:
                lock = WriterLock.acquire(self.folder, ANN_SAVE_WAIT_SECONDS, name=ANN_LOCK_NAME)
                try:
                    ann.save(self.folder, index)
                finally:
                    lock.release()
        self._changed = False

    def close(self, sync_ann: bool = True) -> None:
        """Close, first bringing the ANN index up to date unless `sync_ann` is false (a failed run)."""
        file, self._file = self._file, None
        try:
            if file is not None:
                with write_errors(self.folder):
                    file.close()
            if sync_ann and self._changed and file is not None:
                try:
                    self.sync_ann()
                except IndexError_ as error:  # derived data: the committed index stands; searches rebuild it
                    self.warn(f"could not update the approximate-search file: {error}; searches rebuild it")
        finally:  # the database and the lock are released whatever the vector file says
            super().close()
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    def __enter__(self) -> IndexWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.close()
            return
        with suppress(IndexError_):  # the exception already on its way out says what went wrong; keep it
            self.close(sync_ann=False)  # an interrupted run must stop now; the next search catches up


def renumber_rows(conn: sqlite3.Connection, live: np.ndarray) -> None:
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
