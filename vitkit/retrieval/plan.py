"""Planning an update: which scanned files are unchanged, reusable, failed before, or need the model.

Planning needs the filesystem and the index only, never the model, so a run with nothing to embed
never loads one.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vitkit.retrieval.store import IndexReader

HASH_CHUNK_BYTES = 1 << 20
HASH_THREADS = 4  # hashing is I/O-bound and blake2b releases the GIL, so a few threads overlap reads


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
    failed_unchanged: tuple[str, ...] = ()  # failed before and not changed since: skipped


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


def is_storable(path: str) -> bool:
    # SQLite TEXT is UTF-8; names with undecodable bytes (surrogate escapes) cannot be keys.
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def plan_update(index: IndexReader, states: Sequence[FileState]) -> UpdatePlan:
    """Sort scanned files by the work they need; hashes only new files and files whose
    (size, mtime_ns) changed since they were indexed or failed."""
    by_path = {state.path: state for state in states}  # a path listed twice is planned once
    failures = [(path, "file name is not valid UTF-8; rename it to index it")
                for path in by_path if not is_storable(path)]
    paths = [path for path in by_path if is_storable(path)]
    stored = index.stored_states(paths)
    failed_before = index.remembered_failures(paths)
    unchanged, failed_unchanged, changed = [], [], []
    for path in paths:
        now = (by_path[path].size, by_path[path].mtime_ns)
        if path in stored and stored[path][:2] == now:
            unchanged.append(path)
        elif failed_before.get(path) == now:
            failed_unchanged.append(path)
        else:
            changed.append(path)
    with ThreadPoolExecutor(HASH_THREADS) as pool:
        hashed = list(zip(changed, pool.map(_try_hash, changed)))
    failures += [(path, reason) for path, (_, reason) in hashed if reason is not None]
    digests = [(path, digest) for path, (digest, _) in hashed if digest is not None]
    known = index.rows_for_hashes([digest for _, digest in digests])
    return UpdatePlan(unchanged=tuple(unchanged),
                      reusable=tuple(pair for pair in digests if pair[1] in known),
                      to_embed=tuple(pair for pair in digests if pair[1] not in known),
                      hash_failures=tuple(failures),
                      failed_unchanged=tuple(failed_unchanged))


def _try_hash(path: str) -> tuple[str | None, str | None]:
    try:
        return content_hash(path), None
    except OSError as e:
        return None, e.strerror or type(e).__name__
