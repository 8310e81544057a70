"""The SQLite side of an index: schema and migrations, connections, transactions, and what a failed write means.

`index.sqlite` is in WAL mode, so readers never wait for the writer. Each schema change is a numbered
migration run in one transaction with `PRAGMA user_version`, so a database is always at one version
(the row index is not one: see ROW_INDEX).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitkit.errors import IndexError_, IndexModelMismatchError, IndexSchemaError
from vitkit.outputs.files import NO_SPACE, NOT_WRITABLE, get_write_failure_kind

DB_NAME = "index.sqlite"
SQL_BATCH = 900  # stays under SQLite's bound-parameter limit on old builds (999)

# Each statement says why it exists. MIGRATIONS[v] takes a database from version v to v + 1.
_VERSION_1 = (
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
_VERSION_2 = (
    # Files the model could not use, as they were when they failed: an unchanged (size, mtime_ns) is
    # skipped instead of being decoded again on every run. meta also gains model_ref (see Meta).
    """CREATE TABLE failures (
        path TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        reason TEXT NOT NULL
    ) WITHOUT ROWID""",
)
MIGRATIONS: tuple[tuple[str, ...], ...] = (_VERSION_1, _VERSION_2)
SCHEMA_VERSION = len(MIGRATIONS)

# Files by vector row: search maps its few best rows to paths inside its own read transaction instead
# of scanning `files` or loading every path (~40 bytes per file: the row and the path, the table's key).
# Not a migration: an index changes no answer, and SQLite keeps it up to date for writers that do not
# know it, so vitkit versions before it still read and write the folder. Every writer creates it when
# it opens an index that lacks it (~1 s at 1M files, once); readers search without it until then.
ROW_INDEX = "files_by_row"
_CREATE_ROW_INDEX = f"CREATE INDEX IF NOT EXISTS {ROW_INDEX} ON files (row)"


@dataclass(frozen=True)
class Meta:
    model_key: str  # names the vector space (see update.get_model_key); compared, never shown as a --model
    dim: int
    generation: int
    model_ref: str | None = None  # a --model value that names the model (alias or folder); None before schema 2


def reference_for_key(model_key: str) -> str:
    """A --model value for an index written before model_ref was stored: the key is
    `backend:source[#fingerprint]`, and every source (hf-hub:..., arch:tag, local-dir:/abs) resolves."""
    source = model_key.partition(":")[2] or model_key
    return source.removeprefix("local-dir:").partition("#")[0]


def connect(db: Path, *, readonly: bool) -> sqlite3.Connection:
    # isolation_level=None: transactions are explicit (see transaction()), never opened behind our back.
    target = db.absolute().as_uri() + ("?mode=ro" if readonly else "")
    return sqlite3.connect(target, uri=True, isolation_level=None, timeout=30.0)


@contextmanager
def transaction(conn: sqlite3.Connection, begin: str = "BEGIN IMMEDIATE") -> Iterator[None]:
    if begin == "BEGIN" and conn.in_transaction:
        yield  # a read inside the caller's transaction: it sees the same committed state
        return
    conn.execute(begin)
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        # A COMMIT that fails (disk full) leaves the transaction open; a failed ROLLBACK must not hide why.
        with suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


def batches(items: Sequence, size: int = SQL_BATCH) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


# --- versions and meta ---------------------------------------------------------------------------


def check_version(conn: sqlite3.Connection, folder: Path) -> int:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise IndexSchemaError(f"index {folder} was written by a newer vitkit (schema {version}, "
                               f"this one reads up to {SCHEMA_VERSION})", hint="upgrade vitkit")
    return version


def create_schema(conn: sqlite3.Connection, folder: Path, meta: Meta) -> None:
    if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
        raise not_an_index(folder)  # someone else's database: never add tables to it
    migrate(conn, 0)
    write_meta(conn, meta)


def migrate(conn: sqlite3.Connection, version: int) -> None:
    """Run the migrations after `version`, inside the caller's transaction."""
    for statements in MIGRATIONS[version:]:
        for statement in statements:
            conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")  # an int constant; PRAGMA takes no parameters


def create_row_index(conn: sqlite3.Connection) -> None:
    conn.execute(_CREATE_ROW_INDEX)


def has_row_index(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?", (ROW_INDEX,)).fetchone() is not None


def read_meta(conn: sqlite3.Connection, folder: Path) -> Meta:
    try:
        values = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        return Meta(values["model_key"], int(values["dim"]), int(values["generation"]), values.get("model_ref"))
    except (sqlite3.OperationalError, KeyError, ValueError):
        raise not_an_index(folder) from None


def write_meta(conn: sqlite3.Connection, meta: Meta) -> None:
    values = [("model_key", meta.model_key), ("dim", str(meta.dim)), ("generation", str(meta.generation))]
    if meta.model_ref:
        values.append(("model_ref", meta.model_ref))
    conn.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", values)


def has_failures_table(conn: sqlite3.Connection) -> bool:
    # A reader may open an index a writer of schema 1 made; only writers migrate.
    return conn.execute("PRAGMA user_version").fetchone()[0] >= 2


def paths_and_rows(conn: sqlite3.Connection) -> tuple[list[str], np.ndarray]:
    """Every file's path, sorted, and its vector row. SQLite joins them into two strings (~2x faster at
    1M files than a million row tuples); the ORDER BY subquery is not flattened into an aggregate, so
    the strings follow it. Paths cannot hold NUL. Past SQLite's string limit, rows come one by one."""
    query = ("SELECT CAST(group_concat(path, char(0)) AS BLOB), group_concat(row) "
             "FROM (SELECT path, row FROM files ORDER BY path)")
    try:
        joined_paths, joined_rows = conn.execute(query).fetchone()
    except sqlite3.DataError:  # SQLITE_TOOBIG
        pairs = conn.execute("SELECT path, row FROM files ORDER BY path").fetchall()
        return [path for path, _ in pairs], np.fromiter((row for _, row in pairs), dtype=np.int64, count=len(pairs))
    if joined_paths is None:
        return [], np.zeros(0, dtype=np.int64)
    return joined_paths.decode().split("\0"), np.fromstring(joined_rows, dtype=np.int64, sep=",")


# --- errors ---------------------------------------------------------------------------------------


def not_an_index(folder: Path) -> IndexSchemaError:
    return IndexSchemaError(f"{folder / DB_NAME} is not a vitkit index",
                            hint="point --index (index_dir= in Python) at another folder")


def mismatch(folder: Path, meta: Meta, model_key: str, dim: int | None, model_ref: str | None,
             verb: str) -> IndexModelMismatchError:
    """The message names the vector spaces; the hint names a --model value that works for the index."""
    same_key = meta.model_key == model_key
    old = f"{meta.model_key} (dim {meta.dim})" if same_key else meta.model_key
    new = f"{model_key} (dim {dim})" if same_key else model_key
    ref = meta.model_ref or reference_for_key(meta.model_key)
    use_old = f"{verb} with --model {ref} (model={ref!r} in Python), " if ref != model_ref and not same_key else ""
    return IndexModelMismatchError(
        f"index {folder} was built with {old}, not {new}",
        hint=f"{use_old}pass --rebuild (rebuild=True) to re-embed everything with the new model, "
             f"or use another --index DIR (index_dir=) for a separate index")


def open_error(folder: Path, error: sqlite3.DatabaseError) -> IndexError_:
    if isinstance(error, sqlite3.OperationalError):  # cannot open, read-only, locked too long: not the file's fault
        return IndexError_(f"cannot use index {folder}: {error}",
                           hint="check the path, its permissions and the free disk space")
    return not_an_index(folder)


def no_index(folder: Path) -> IndexSchemaError:
    return IndexSchemaError(f"no index at {folder}", hint="build one with `vitkit index FOLDER` (vitkit.index() in Python)")


def damaged(folder: Path, detail: str) -> IndexSchemaError:
    return IndexSchemaError(f"index {folder} is damaged: {detail}",
                            hint="rebuild it with --rebuild (rebuild=True in Python)")


_BUSY = "busy"
_SQLITE_KINDS = {sqlite3.SQLITE_FULL: NO_SPACE, sqlite3.SQLITE_READONLY: NOT_WRITABLE,
                 sqlite3.SQLITE_PERM: NOT_WRITABLE, sqlite3.SQLITE_BUSY: _BUSY, sqlite3.SQLITE_LOCKED: _BUSY}
_WRITE_HINTS = {
    NO_SPACE: "free some space (or use another index folder) and run again",
    NOT_WRITABLE: "check the index folder's permissions (or use another index folder) and run again",
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
def write_errors(folder: Path) -> Iterator[None]:
    """A full disk, a file-size limit or a read-only folder becomes one clear error. Earlier commits
    stay, and the crash-safety ordering means nothing refers to vector bytes of the failed write."""
    try:
        yield
    except (OSError, sqlite3.OperationalError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise IndexError_(f"cannot write to index {folder}: {reason}", hint=_write_failure_hint(e)) from e
