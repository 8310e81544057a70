"""The index's public names in one place: open a folder for reading or for writing, and the types they use.

The storage is split by job: schema.py (SQLite), vectors.py (the vector file), lock.py (the writer lock),
store.py (reading), writer.py (writing), exact.py (exact search), plan.py (what an update must do).
"""

from __future__ import annotations

from vitkit.retrieval.exact import Hit
from vitkit.retrieval.lock import LOCK_NAME
from vitkit.retrieval.plan import FileState, UpdatePlan, content_hash, file_state
from vitkit.retrieval.schema import DB_NAME, SCHEMA_VERSION, write_errors
from vitkit.retrieval.store import Entry, Failure, IndexReader, IndexStats, index_exists, open_reader
from vitkit.retrieval.writer import IndexWriter, MergeCounts, open_writer

__all__ = [
    "DB_NAME", "LOCK_NAME", "SCHEMA_VERSION", "Entry", "Failure", "FileState", "Hit", "IndexReader", "IndexStats",
    "IndexWriter", "MergeCounts", "UpdatePlan", "VectorIndex", "content_hash", "file_state", "index_exists",
    "open_reader", "open_writer", "write_errors",
]


class VectorIndex:
    """The two ways to open an index folder; each returns its own type (a reader cannot write)."""

    open_for_reading = staticmethod(open_reader)
    open_for_writing = staticmethod(open_writer)
