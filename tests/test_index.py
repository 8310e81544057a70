"""The on-disk vector index: exact search parity with numpy, incremental planning, locking, crash leftovers."""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitkit.errors import IndexError_, IndexLockedError, IndexModelMismatchError, IndexSchemaError
from vitkit.retrieval.index import (
    DB_NAME,
    Entry,
    Failure,
    SCHEMA_VERSION,
    FileState,
    IndexStats,
    VectorIndex,
    write_errors,
    content_hash,
    file_state,
)

DIM = 32
MODEL = "test-clip"


def unit_vectors(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def write_png(path: Path, seed: int) -> Path:
    """A tiny real PNG whose bytes differ with the seed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def make_photos(folder: Path, n: int, first_seed: int = 0) -> list[Path]:
    return [write_png(folder / f"img{i:03d}.png", first_seed + i) for i in range(n)]


def entries_for(paths: list[Path], vectors: np.ndarray) -> list[Entry]:
    return [Entry(file_state(str(p)), content_hash(str(p)), v, 6, 4) for p, v in zip(paths, vectors)]


def build(index_dir: Path, paths: list[Path], vectors: np.ndarray) -> None:
    with VectorIndex.open_for_writing(index_dir, MODEL, DIM) as index:
        index.add(entries_for(paths, vectors))


def reference_top_k(paths: list[str], vectors: np.ndarray, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
    """Brute-force cosine on the float16-rounded vectors the index stores; ties broken by path."""
    stored = vectors.astype(np.float16).astype(np.float32)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    scores = q @ stored.T  # (Q, N)
    rank = np.argsort(np.argsort(paths, kind="stable"))
    result = []
    for row in scores:
        order = np.lexsort((rank, -row))[:k]
        result.append([(paths[i], float(row[i])) for i in order])
    return result


def as_pairs(hits) -> list[tuple[str, float]]:
    return [(hit.path, hit.score) for hit in hits]


def assert_same_ranking(hits, reference) -> None:
    assert [h.path for h in hits] == [path for path, _ in reference]
    np.testing.assert_allclose([h.score for h in hits], [score for _, score in reference], atol=1e-5)


# --- search -------------------------------------------------------------------------------------


def test_search_ranking_matches_brute_force_numpy(tmp_path: Path) -> None:
    paths = make_photos(tmp_path / "photos", 300)
    vectors = unit_vectors(300)
    build(tmp_path / "idx", paths, vectors)
    queries = np.random.default_rng(1).standard_normal((5, DIM)).astype(np.float32)  # not normalised: search does it
    with VectorIndex.open_for_reading(tmp_path / "idx", MODEL) as index:
        results = index.search(queries, k=10)
    reference = reference_top_k([str(p) for p in paths], vectors, queries, 10)
    assert len(results) == 5
    for hits, expected in zip(results, reference):
        assert_same_ranking(hits, expected)
        assert all(isinstance(hit.score, float) for hit in hits)


def test_search_chunk_boundaries_do_not_change_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = make_photos(tmp_path / "photos", 100)
    vectors = unit_vectors(100, seed=2)
    build(tmp_path / "idx", paths, vectors)
    queries = unit_vectors(3, seed=3)
    with VectorIndex.open_for_reading(tmp_path / "idx") as index:
        whole = index.search(queries, k=7)
        monkeypatch.setattr("vitkit.retrieval.exact.SEARCH_BUFFER_BYTES", 16 * DIM * 4)  # 16 rows: 7 chunks, the last short
        chunked = index.search(queries, k=7)
    assert [as_pairs(h) for h in chunked] == [as_pairs(h) for h in whole]


def test_copies_are_separate_hits_ordered_by_path(tmp_path: Path) -> None:
    original = write_png(tmp_path / "photos" / "b.png", 0)
    other = write_png(tmp_path / "photos" / "c.png", 1)
    copy = tmp_path / "photos" / "a.png"
    shutil.copy(original, copy)
    vectors = unit_vectors(2, seed=4)
    with VectorIndex.open_for_writing(tmp_path / "idx", MODEL, DIM) as index:
        index.add(entries_for([original, other], vectors))
        index.add([Entry(file_state(str(copy)), content_hash(str(copy)), None, 6, 4)])  # shares the stored vector
        hits = index.search(vectors[:1], k=3)[0]
        assert index.stats().vectors == 2
    assert [h.path for h in hits] == [str(copy), str(original), str(other)]
    assert hits[0].score == hits[1].score == pytest.approx(1.0, abs=1e-3)


def test_search_under_folders_and_threshold(tmp_path: Path) -> None:
    cats = make_photos(tmp_path / "cats", 20, first_seed=0)
    dogs = make_photos(tmp_path / "dogs", 20, first_seed=100)
    vectors = unit_vectors(40, seed=5)
    build(tmp_path / "idx", cats + dogs, vectors)
    query = vectors[25:26]  # one of the dogs
    with VectorIndex.open_for_reading(tmp_path / "idx") as index:
        only_cats = index.search(query, k=5, under=[str(tmp_path / "cats")])[0]
        assert len(only_cats) == 5 and all(h.path.startswith(str(tmp_path / "cats") + os.sep) for h in only_cats)
        assert_same_ranking(only_cats, reference_top_k([str(p) for p in cats], vectors[:20], query, 5)[0])
        one_file = index.search(query, k=5, under=[str(dogs[3])])[0]
        assert [h.path for h in one_file] == [str(dogs[3])]
        everything = index.search(query, k=40)[0]
        above = index.search(query, k=40, threshold=0.2)[0]
        assert above == [h for h in everything if h.score >= 0.2]
        assert above[0].path == str(dogs[5]) and 0 < len(above) < 40
        with pytest.raises(TypeError):
            index.search(query, under=str(tmp_path / "cats"))


def test_empty_index_and_bad_queries(tmp_path: Path) -> None:
    with VectorIndex.open_for_writing(tmp_path / "idx", MODEL, DIM) as index:
        assert index.search(unit_vectors(2), k=3) == [[], []]
        with pytest.raises(ValueError):
            index.search(np.zeros((1, DIM)))
        with pytest.raises(ValueError):
            index.search(unit_vectors(1, dim=DIM + 1))
    with VectorIndex.open_for_reading(tmp_path / "idx") as index:
        assert index.search(unit_vectors(1)[0], k=3) == [[]]  # a single (D,) query works too
        assert index.stats() == IndexStats(files=0, vectors=0, dim=DIM, model_key=MODEL,
                                           bytes_on_disk=index.stats().bytes_on_disk)


# --- incremental updates ------------------------------------------------------------------------


def scan(folder: Path) -> list[FileState]:
    return [file_state(str(p)) for p in sorted(folder.rglob("*.png"))]


def test_plan_update_new_then_unchanged(tmp_path: Path) -> None:
    photos = make_photos(tmp_path / "photos", 5)
    with VectorIndex.open_for_writing(tmp_path / "idx", MODEL, DIM) as index:
        plan = index.plan_update(scan(tmp_path / "photos"))
        assert plan.unchanged == () and plan.reusable == () and plan.hash_failures == ()
        assert plan.to_embed == tuple((str(p), content_hash(str(p))) for p in photos)
        index.add([Entry(file_state(path), digest, v, 6, 4) for (path, digest), v in zip(plan.to_embed, unit_vectors(5))])
        again = index.plan_update(scan(tmp_path / "photos"))
    assert again.unchanged == tuple(str(p) for p in photos)
    assert again.reusable == again.to_embed == again.hash_failures == ()


def test_plan_update_rename_copy_touch_and_edit(tmp_path: Path) -> None:
    photos = make_photos(tmp_path / "photos", 4)
    digests = [content_hash(str(p)) for p in photos]
    build(tmp_path / "idx", photos, unit_vectors(4))
    renamed = photos[0].with_name("renamed.png")
    photos[0].rename(renamed)
    copied = shutil.copy(photos[1], tmp_path / "photos" / "copy.png")
    stat = photos[2].stat()
    os.utime(photos[2], ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))  # touched, same bytes
    edited = photos[3].read_bytes()
    photos[3].write_bytes(edited[:-1] + bytes([edited[-1] ^ 0xFF]))  # same size, new content
    os.utime(photos[3], ns=(stat.st_atime_ns, stat.st_mtime_ns + 7_000_000_000))
    with VectorIndex.open_for_writing(tmp_path / "idx", MODEL, DIM) as index:
        plan = index.plan_update(scan(tmp_path / "photos"))
    assert plan.unchanged == (str(photos[1]),)
    assert set(plan.reusable) == {(str(renamed), digests[0]), (str(copied), digests[1]), (str(photos[2]), digests[2])}
    assert plan.to_embed == ((str(photos[3]), content_hash(str(photos[3]))),)
    assert plan.to_embed[0][1] != digests[3]


def test_plan_update_reports_unreadable_files(tmp_path: Path) -> None:
    photos = make_photos(tmp_path / "photos", 2)
    states = scan(tmp_path / "photos")
    photos[1].unlink()  # vanished between the scan and the hashing
    with VectorIndex.open_for_writing(tmp_path / "idx", MODEL, DIM) as index:
        plan = index.plan_update(states)
    assert [path for path, _ in plan.to_embed] == [str(photos[0])]
    assert plan.hash_failures == ((str(photos[1]), "No such file or directory"),)


def test_add_updates_a_path_and_reuse_needs_a_known_hash(tmp_path: Path) -> None:
    photo = write_png(tmp_path / "photos" / "a.png", 0)
    first, second = unit_vectors(2, seed=6)
    with VectorIndex.open_for_writing(tmp_path / "idx", MODEL, DIM) as index:
        index.add([Entry(file_state(str(photo)), "hash-1", first, 6, 4)])
        index.add([Entry(file_state(str(photo)), "hash-2", second, 6, 4)])
        assert index.known_paths() == {str(photo)}
        assert index.search(second, k=1)[0][0].score == pytest.approx(1.0, abs=1e-3)
        with pytest.raises(ValueError, match="no stored vector"):
            index.add([Entry(file_state(str(photo)), "never-seen", None, 6, 4)])
        with pytest.raises(ValueError, match="shape"):
            index.add([Entry(file_state(str(photo)), "hash-3", np.ones(DIM + 1), 6, 4)])
        with pytest.raises(ValueError, match="no direction"):
            index.add([Entry(file_state(str(photo)), "hash-3", np.zeros(DIM), 6, 4)])
        assert index.stats().files == 1


def test_remove_missing_only_under_the_scanned_folder(tmp_path: Path) -> None:
    inside = make_photos(tmp_path / "x" / "a", 3)
    sibling = make_photos(tmp_path / "x" / "ab", 2, first_seed=10)  # shares the "a" prefix, not the folder
    build(tmp_path / "idx", inside + sibling, unit_vectors(5))
    inside[1].unlink()
    sibling[0].unlink()
    with VectorIndex.open_for_writing(tmp_path / "idx", MODEL, DIM) as index:
        seen = [s.path for s in scan(tmp_path / "x" / "a")]
        assert index.remove_missing(seen, [str(tmp_path / "x" / "a")]) == 1
        assert index.known_paths() == {str(p) for p in (inside[0], inside[2], *sibling)}
        assert index.remove_missing(seen, [str(tmp_path / "x" / "a") + os.sep]) == 0  # trailing slash alike
        with pytest.raises(TypeError):
            index.remove_missing(seen, str(tmp_path / "x" / "a"))
        assert index.remove_paths([str(sibling[0])]) == 1


def test_reader_sees_rows_committed_after_it_opened(tmp_path: Path) -> None:
    photos = make_photos(tmp_path / "photos", 4)
    vectors = unit_vectors(4, seed=7)
    with VectorIndex.open_for_writing(tmp_path / "idx", MODEL, DIM) as writer:
        writer.add(entries_for(photos[:2], vectors[:2]))
        with VectorIndex.open_for_reading(tmp_path / "idx", MODEL) as reader:
            assert len(reader.search(vectors[3], k=10)[0]) == 2
            writer.add(entries_for(photos[2:], vectors[2:]))
            assert reader.search(vectors[3], k=1)[0][0].path == str(photos[3])
        with VectorIndex.open_for_reading(tmp_path / "idx") as fresh:
            assert fresh.stats().files == 4


WRITER_SCRIPT = """
import sys, time
import numpy as np
from vitkit.retrieval.index import Entry, FileState, VectorIndex
folder, batches, per_batch, dim = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
vectors = np.random.default_rng(0).standard_normal((batches * per_batch, dim)).astype(np.float32)
with VectorIndex.open_for_writing(folder, "test-clip", dim) as index:
    print("ready", flush=True)
    for b in range(batches):
        index.add([Entry(FileState(f"/w/{i:05d}.png", 1, 1), f"h{i}", vectors[i], 1, 1)
                   for i in range(b * per_batch, (b + 1) * per_batch)])
        time.sleep(0.01)  # like a model embedding the next batch; gives the reader states in between
"""


def test_search_while_another_process_writes(tmp_path: Path) -> None:
    batches, per_batch = 40, 50
    writer = subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, str(tmp_path / "idx"), str(batches), str(per_batch),
                               str(DIM)], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "ready"
    counts = []
    with VectorIndex.open_for_reading(tmp_path / "idx", MODEL) as reader:
        while writer.poll() is None or not counts or counts[-1] < batches * per_batch:
            hits = reader.search(unit_vectors(1, seed=13), k=batches * per_batch)[0]
            assert all(-1.01 <= h.score <= 1.01 for h in hits)
            counts.append(len(hits))
    assert writer.wait(timeout=60) == 0
    assert counts == sorted(counts) and counts[-1] == batches * per_batch  # never a row lost or half-written
    assert all(c % per_batch == 0 for c in counts)  # batches appear whole: one transaction each
    assert len(set(counts)) >= 3  # the reader really did search between commits


def test_compact_keeps_results_and_drops_garbage(tmp_path: Path) -> None:
    photos = make_photos(tmp_path / "photos", 30)
    vectors = unit_vectors(30, seed=8)
    build(tmp_path / "idx", photos, vectors)
    queries = unit_vectors(4, seed=9)
    with VectorIndex.open_for_writing(tmp_path / "idx", MODEL, DIM) as index:
        index.remove_paths([str(p) for p in photos[::2]])
        before = index.search(queries, k=5)
        with VectorIndex.open_for_reading(tmp_path / "idx") as old_reader:
            old_reader.search(queries, k=5)  # maps the pre-compaction file
            index.compact()
            assert [as_pairs(h) for h in old_reader.search(queries, k=5)] == [as_pairs(h) for h in before]
        assert [as_pairs(h) for h in index.search(queries, k=5)] == [as_pairs(h) for h in before]
        assert index.stats().vectors == 15
    names = sorted(p.name for p in (tmp_path / "idx").glob("vectors*.f16"))
    assert names == ["vectors.1.f16"] and (tmp_path / "idx" / names[0]).stat().st_size == 15 * DIM * 2


# --- model, schema and files that are not indexes -----------------------------------------------


def test_model_mismatch_raises_and_rebuild_resets(tmp_path: Path) -> None:
    photos = make_photos(tmp_path / "photos", 3)
    build(tmp_path / "idx", photos, unit_vectors(3))
    with pytest.raises(IndexModelMismatchError, match="built with test-clip, not other-clip") as caught:
        VectorIndex.open_for_writing(tmp_path / "idx", "other-clip", DIM)
    assert "--rebuild" in caught.value.hint
    with pytest.raises(IndexModelMismatchError, match="dim"):
        VectorIndex.open_for_writing(tmp_path / "idx", MODEL, DIM * 2)
    with pytest.raises(IndexModelMismatchError):
        VectorIndex.open_for_reading(tmp_path / "idx", "other-clip")
    with VectorIndex.open_for_writing(tmp_path / "idx", "other-clip", DIM * 2, rebuild=True) as index:
        assert (index.model_key, index.dim) == ("other-clip", DIM * 2)
        assert index.stats().files == index.stats().vectors == 0
        assert index.plan_update(scan(tmp_path / "photos")).reusable == ()  # old vectors are gone
        index.add([Entry(file_state(str(photos[0])), "h", unit_vectors(1, dim=DIM * 2)[0], 6, 4)])
    with VectorIndex.open_for_reading(tmp_path / "idx", "other-clip") as reader:
        assert [h.path for h in reader.search(unit_vectors(1, dim=DIM * 2), k=5)[0]] == [str(photos[0])]
    assert [p.name for p in (tmp_path / "idx").glob("vectors*.f16")] == ["vectors.1.f16"]


def test_newer_schema_version_is_refused(tmp_path: Path) -> None:
    build(tmp_path / "idx", make_photos(tmp_path / "photos", 1), unit_vectors(1))
    with sqlite3.connect(tmp_path / "idx" / DB_NAME) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    for open_index in (lambda: VectorIndex.open_for_writing(tmp_path / "idx", MODEL, DIM),
                       lambda: VectorIndex.open_for_reading(tmp_path / "idx")):
        with pytest.raises(IndexSchemaError, match="newer vitkit") as caught:
            open_index()
        assert caught.value.hint == "upgrade vitkit"


def test_files_that_are_not_indexes(tmp_path: Path) -> None:
    with pytest.raises(IndexSchemaError, match="no index at") as caught:
        VectorIndex.open_for_reading(tmp_path)
    assert "vitkit index" in caught.value.hint
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / DB_NAME).write_bytes(b"this is not a database" * 50)
    with pytest.raises(IndexSchemaError, match="not a vitkit index"):
        VectorIndex.open_for_writing(tmp_path / "junk", MODEL, DIM)
    with pytest.raises(IndexSchemaError, match="not a vitkit index"):
        VectorIndex.open_for_reading(tmp_path / "junk")
    (tmp_path / "other").mkdir()
    with sqlite3.connect(tmp_path / "other" / DB_NAME) as conn:
        conn.execute("CREATE TABLE notes (text TEXT)")
    with pytest.raises(IndexSchemaError, match="not a vitkit index"):
        VectorIndex.open_for_writing(tmp_path / "other", MODEL, DIM)
    with sqlite3.connect(tmp_path / "other" / DB_NAME) as conn:
        assert conn.execute("SELECT name FROM sqlite_master").fetchall() == [("notes",)]  # left untouched


# --- locking --------------------------------------------------------------------------------------


def test_second_writer_in_the_same_process_is_refused_quickly(tmp_path: Path) -> None:
    with VectorIndex.open_for_writing(tmp_path / "idx", MODEL, DIM):
        start = time.monotonic()
        with pytest.raises(IndexLockedError, match=f"locked by another vitkit process \\(pid {os.getpid()}\\)") as caught:
            VectorIndex.open_for_writing(tmp_path / "idx", MODEL, DIM)
        assert time.monotonic() - start < 0.5
        assert "--wait" in caught.value.hint
        with VectorIndex.open_for_reading(tmp_path / "idx") as reader:  # readers take no lock
            assert reader.stats().files == 0
    VectorIndex.open_for_writing(tmp_path / "idx", MODEL, DIM).close()  # released on close


def test_writer_in_another_process_holds_the_lock(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from vitkit.retrieval.index import VectorIndex; "
         f"ix = VectorIndex.open_for_writing(sys.argv[1], {MODEL!r}, {DIM}); print('ready', flush=True); sys.stdin.read()",
         str(tmp_path / "idx")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(IndexLockedError, match=f"pid {holder.pid}"):
            VectorIndex.open_for_writing(tmp_path / "idx", MODEL, DIM, wait_seconds=0.1)
    finally:
        holder.communicate("", timeout=30)
    VectorIndex.open_for_writing(tmp_path / "idx", MODEL, DIM).close()  # the kernel released it at exit


def test_wait_seconds_gets_the_lock_once_released(tmp_path: Path) -> None:
    opened = threading.Event()

    def hold_briefly() -> None:
        # Opened and closed in this thread: a SQLite connection belongs to the thread that made it.
        index = VectorIndex.open_for_writing(tmp_path / "idx", MODEL, DIM)
        opened.set()
        time.sleep(0.3)
        index.close()

    holder = threading.Thread(target=hold_briefly)
    holder.start()
    assert opened.wait(10)
    start = time.monotonic()
    with VectorIndex.open_for_writing(tmp_path / "idx", MODEL, DIM, wait_seconds=10.0):
        assert 0.15 < time.monotonic() - start < 5
    holder.join()


# --- crash leftovers -----------------------------------------------------------------------------


def test_partial_trailing_row_and_orphan_rows_are_harmless(tmp_path: Path) -> None:
    photos = make_photos(tmp_path / "photos", 10)
    vectors = unit_vectors(10, seed=10)
    build(tmp_path / "idx", photos[:8], vectors[:8])
    vector_file = tmp_path / "idx" / "vectors.f16"
    with open(vector_file, "ab") as f:
        f.write(np.full(DIM, 7.0, np.float16).tobytes())  # a whole row no commit refers to (killed before commit)
        f.write(b"\x01\x02\x03")  # and a partial one (killed mid-write)
    queries = unit_vectors(3, seed=11)
    with VectorIndex.open_for_reading(tmp_path / "idx") as reader:
        for hits, expected in zip(reader.search(queries, k=5), reference_top_k([str(p) for p in photos[:8]], vectors[:8], queries, 5)):
            assert_same_ranking(hits, expected)
    with VectorIndex.open_for_writing(tmp_path / "idx", MODEL, DIM) as index:
        assert vector_file.stat().st_size == 9 * DIM * 2  # truncated to whole rows
        index.add(entries_for(photos[8:], vectors[8:]))  # new rows after the orphan, never reusing it
    assert vector_file.stat().st_size == 11 * DIM * 2
    with VectorIndex.open_for_reading(tmp_path / "idx") as reader:
        for hits, expected in zip(reader.search(queries, k=5), reference_top_k([str(p) for p in photos], vectors, queries, 5)):
            assert_same_ranking(hits, expected)


# --- paths are data, never SQL ------------------------------------------------------------------


def test_sql_metacharacters_in_paths_are_literal(tmp_path: Path) -> None:
    names = ["'; DROP TABLE files; --.png", "100%.png", "a_b.png", 'quote".png']
    under_underscore = [write_png(tmp_path / "d_" / name, i) for i, name in enumerate(names)]
    lookalike = write_png(tmp_path / "dX" / "plain.png", 50)  # would match "d_" as a LIKE pattern
    percent = write_png(tmp_path / "%" / "p.png", 51)
    everything = [*under_underscore, lookalike, percent]
    vectors = unit_vectors(len(everything), seed=12)
    build(tmp_path / "idx", everything, vectors)
    with VectorIndex.open_for_writing(tmp_path / "idx", MODEL, DIM) as index:
        assert index.known_paths() == {str(p) for p in everything}
        assert index.plan_update(scan(tmp_path)).unchanged == tuple(sorted(str(p) for p in everything))
        hits = index.search(vectors[0], k=10, under=[str(tmp_path / "d_")])[0]
        assert sorted(h.path for h in hits) == sorted(str(p) for p in under_underscore)
        assert hits[0].path == str(under_underscore[0])
        assert [h.path for h in index.search(vectors[0], k=10, under=[str(tmp_path / "%")])[0]] == [str(percent)]
        assert index.remove_missing([], [str(tmp_path / "d_")]) == len(names)
        assert index.known_paths() == {str(lookalike), str(percent)}


# --- write failures ------------------------------------------------------------------------------


class _FullDiskAtCommit:
    """A connection whose COMMIT fails as SQLite's does on a full disk; everything else goes to the real one."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.statements: list[str] = []

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        self.statements.append(sql)
        if sql == "COMMIT":
            error = sqlite3.OperationalError("database or disk is full")
            error.sqlite_errorcode = sqlite3.SQLITE_FULL
            raise error
        return self.conn.execute(sql, *args)

    def __getattr__(self, name: str) -> object:
        return getattr(self.conn, name)


def test_a_failed_commit_rolls_back_and_leaves_the_index_as_it_was(tmp_path: Path) -> None:
    paths = make_photos(tmp_path / "photos", 3)
    vectors = unit_vectors(3)
    build(tmp_path / "idx", paths[:1], vectors[:1])
    with VectorIndex.open_for_writing(tmp_path / "idx", MODEL, DIM) as index:
        real = index._conn
        index._conn = failing = _FullDiskAtCommit(real)
        full = f"^cannot write to index {tmp_path / 'idx'}: database or disk is full$"
        with pytest.raises(IndexError_, match=full) as caught:
            index.add(entries_for(paths[1:], vectors[1:]))
        assert caught.value.hint.startswith("free some space")
        assert failing.statements[-2:] == ["COMMIT", "ROLLBACK"] and not real.in_transaction
        index._conn = real
    with VectorIndex.open_for_reading(tmp_path / "idx", MODEL) as index:
        assert index.known_paths() == {str(paths[0])}
        [[hit]] = index.search(vectors[0], k=5)
        assert hit.path == str(paths[0]) and hit.score == pytest.approx(1.0, abs=1e-3)
    with VectorIndex.open_for_writing(tmp_path / "idx", MODEL, DIM) as index:  # the garbage rows cost nothing
        index.add(entries_for(paths[1:], vectors[1:]))
        assert index.stats().files == 3


def _real_sqlite_error(folder: Path, cause: str) -> sqlite3.OperationalError:
    """The error SQLite itself raises (with its result code) for a busy or a read-only database."""
    folder.mkdir()
    sqlite3.connect(folder / "db").execute("CREATE TABLE t (x)")
    holder = sqlite3.connect(folder / "db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    other = sqlite3.connect(f"{(folder / 'db').as_uri()}{'?mode=ro' if cause == 'readonly' else ''}", uri=True,
                            timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE" if cause == "busy" else "INSERT INTO t VALUES (1)")
    except sqlite3.OperationalError as e:
        return e
    finally:
        other.close()
        holder.close()
    raise AssertionError(f"SQLite raised nothing for {cause}")


@pytest.mark.parametrize(("cause", "reason", "hint"), [
    (OSError(errno.ENOSPC, "No space left on device"), "No space left on device", "free some space"),
    (OSError(errno.EFBIG, "File too large"), "File too large", "free some space"),
    (PermissionError(errno.EACCES, "Permission denied"), "Permission denied", "check the index folder's permissions"),
    (OSError(errno.EROFS, "Read-only file system"), "Read-only file system", "check the index folder's permissions"),
    (OSError(errno.EIO, "Input/output error"), "Input/output error", "check the index folder and its disk"),
    ("busy", "database is locked", "another program is using the index database"),
    ("readonly", "attempt to write a readonly database", "check the index folder's permissions"),
])
def test_write_failures_get_the_hint_for_their_cause(cause: OSError | str, reason: str, hint: str,
                                                      tmp_path: Path) -> None:
    error = _real_sqlite_error(tmp_path / "sqlite", cause) if isinstance(cause, str) else cause
    with pytest.raises(IndexError_, match=f"^cannot write to index {tmp_path}: {reason}$") as caught:
        with write_errors(tmp_path):
            raise error
    assert caught.value.hint.startswith(hint)
    assert caught.value.hint.endswith("; every batch finished before this is kept")


def test_closing_after_an_error_keeps_that_error_and_releases_the_lock(tmp_path: Path) -> None:
    class FailingClose:  # a vector file whose close fails, as on a disk that has gone away
        def __init__(self, file: object) -> None:
            self.file = file

        def close(self) -> None:
            self.file.close()
            raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(ValueError, match="the original error"):
        with VectorIndex.open_for_writing(tmp_path / "idx", MODEL, DIM) as index:
            index._file = FailingClose(index._file)
            raise ValueError("the original error")
    index = VectorIndex.open_for_writing(tmp_path / "idx", MODEL, DIM)  # the lock was released
    index._file = FailingClose(index._file)
    with pytest.raises(IndexError_, match="cannot write to index .*: Input/output error"):
        index.close()  # with nothing else going wrong, the failure is reported, typed
    VectorIndex.open_for_writing(tmp_path / "idx", MODEL, DIM).close()


# --- compaction -----------------------------------------------------------------------------------


def test_dead_vectors_are_counted_and_compaction_triggers_above_half(tmp_path: Path) -> None:
    photos = make_photos(tmp_path / "photos", 10)
    vectors = unit_vectors(10, seed=14)
    build(tmp_path / "idx", photos, vectors)
    queries = unit_vectors(3, seed=15)
    vector_file = tmp_path / "idx" / "vectors.f16"
    with VectorIndex.open_for_writing(tmp_path / "idx", MODEL, DIM) as index:
        index.remove_paths([str(p) for p in photos[:5]])
        assert index.stats().dead_vectors == 5
        assert index.compact_if_mostly_dead() == 0  # exactly half: not more than half
        assert vector_file.stat().st_size == 10 * DIM * 2
        index.remove_paths([str(photos[5])])
        before = [as_pairs(h) for h in index.search(queries, k=10)]
        assert index.stats().dead_vectors == 6
        assert index.compact_if_mostly_dead() == 6
        assert [as_pairs(h) for h in index.search(queries, k=10)] == before
        assert index.stats().dead_vectors == 0 and index.stats().files == 4
    assert not vector_file.exists()
    assert (tmp_path / "idx" / "vectors.1.f16").stat().st_size == 4 * DIM * 2
    with VectorIndex.open_for_reading(tmp_path / "idx", MODEL) as reader:
        assert [as_pairs(h) for h in reader.search(queries, k=10)] == before


_KILLED_COMPACTION = """
import os, signal, sys
import vitkit.retrieval.writer as writer
from vitkit.retrieval.index import VectorIndex

folder, step = sys.argv[1], sys.argv[2]

def die(*_):
    os.kill(os.getpid(), signal.SIGKILL)

real_copy, real_renumber = writer.copy_rows, writer.renumber_rows
def half_copy(source, target, rows, dim):
    real_copy(source, target, rows, dim)
    os.truncate(target, os.path.getsize(target) // 2 + 3)  # a copy cut short, mid-row
    die()
def renumber_then_die(conn, live):
    real_renumber(conn, live)  # inside the transaction, before COMMIT
    die()
patches = {"copy": ("copy_rows", half_copy), "commit": ("renumber_rows", renumber_then_die),
           "cleanup": ("remove_other_generations", die)}  # after COMMIT, the old file still there
index = VectorIndex.open_for_writing(folder, "test-clip", int(sys.argv[3]))
setattr(writer, *patches[step])
index.compact()
print("not killed")
"""


@pytest.mark.parametrize("step", ["copy", "commit", "cleanup"])
def test_a_kill_at_any_step_of_compaction_leaves_a_usable_index(step: str, tmp_path: Path) -> None:
    photos = make_photos(tmp_path / "photos", 12)
    vectors = unit_vectors(12, seed=16)
    build(tmp_path / "idx", photos, vectors)
    with VectorIndex.open_for_writing(tmp_path / "idx", MODEL, DIM) as index:
        index.remove_paths([str(p) for p in photos[::3]])
    queries = unit_vectors(3, seed=17)
    expected = reference_top_k([str(p) for i, p in enumerate(photos) if i % 3], vectors[[i % 3 != 0 for i in range(12)]],
                               queries, 5)
    child = subprocess.run([sys.executable, "-c", _KILLED_COMPACTION, str(tmp_path / "idx"), step, str(DIM)],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == -9, child.stdout + child.stderr
    with VectorIndex.open_for_reading(tmp_path / "idx", MODEL) as reader:
        for hits, reference in zip(reader.search(queries, k=5), expected):
            assert_same_ranking(hits, reference)
        assert reader.stats().files == 8
    with VectorIndex.open_for_writing(tmp_path / "idx", MODEL, DIM) as index:
        live = sorted(p.name for p in (tmp_path / "idx").glob("vectors*.f16"))
        assert len(live) == 1  # the leftover (half copy, or old file) is gone
        assert index.compact() == (0 if step == "cleanup" else 4)
        for hits, reference in zip(index.search(queries, k=5), expected):
            assert_same_ranking(hits, reference)
        index.add(entries_for(photos[:1], vectors[:1]))  # and it takes new rows
        assert index.stats().files == 9


_CHURN = """
import sys
import numpy as np
from vitkit.retrieval.index import Entry, FileState, VectorIndex
folder, n, dim, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
with VectorIndex.open_for_writing(folder, "test-clip", dim) as index:
    print("ready", flush=True)
    for r in range(rounds):  # new content for every path, so all old rows die, then compact them away
        vectors = np.random.default_rng(r).standard_normal((n, dim)).astype(np.float32)
        index.add([Entry(FileState(f"/w/{i:03d}.png", 1, r + 2), f"h{r}-{i}", vectors[i]) for i in range(n)])
        assert index.compact() == n
"""


def test_readers_never_see_a_torn_state_while_the_writer_compacts(tmp_path: Path) -> None:
    n = 40
    with VectorIndex.open_for_writing(tmp_path / "idx", MODEL, DIM) as index:
        index.add([Entry(FileState(f"/w/{i:03d}.png", 1, 1), f"first-{i}", v) for i, v in enumerate(unit_vectors(n))])
    writer = subprocess.Popen([sys.executable, "-c", _CHURN, str(tmp_path / "idx"), str(n), str(DIM), "25"],
                              stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "ready"
    searches = 0
    with VectorIndex.open_for_reading(tmp_path / "idx", MODEL) as reader:
        while writer.poll() is None or searches == 0:
            hits = reader.search(unit_vectors(1, seed=18), k=n)[0]
            assert sorted(h.path for h in hits) == [f"/w/{i:03d}.png" for i in range(n)]
            assert all(-1.01 <= h.score <= 1.01 for h in hits)
            searches += 1
    assert writer.wait(timeout=60) == 0
    assert searches >= 3


# --- failures, migrations and model names ----------------------------------------------------------


def test_failures_are_skipped_until_the_file_changes(tmp_path: Path) -> None:
    photos = make_photos(tmp_path / "photos", 3)
    with VectorIndex.open_for_writing(tmp_path / "idx", MODEL, DIM) as index:
        state = file_state(str(photos[0]))
        index.record_failures([Failure(state.path, state.size, state.mtime_ns, "cannot decode")])
        plan = index.plan_update(scan(tmp_path / "photos"))
        assert plan.failed_unchanged == (str(photos[0]),)
        assert [path for path, _ in plan.to_embed] == [str(p) for p in photos[1:]]
        assert index.failures() == [Failure(state.path, state.size, state.mtime_ns, "cannot decode")]
        os.utime(photos[0], ns=(state.mtime_ns, state.mtime_ns + 1_000_000_000))  # changed: tried again
        assert [path for path, _ in index.plan_update(scan(tmp_path / "photos")).to_embed] == [str(p) for p in photos]
        index.add(entries_for(photos[:1], unit_vectors(1)))  # it worked this time: forgotten
        assert index.failures() == []
        state = file_state(str(photos[1]))
        index.record_failures([Failure(state.path, state.size, state.mtime_ns, "cannot decode")])
        photos[1].unlink()
        index.remove_missing([str(photos[0])], [str(tmp_path / "photos")], failing_paths=[])
        assert index.failures() == []  # a failed file that is gone is forgotten too
        index.record_failures([Failure(str(photos[2]), 1, 1, "x")])
    with VectorIndex.open_for_writing(tmp_path / "idx", MODEL, DIM, rebuild=True) as index:
        assert index.failures() == []  # another model may read it


def _make_version_1_index(folder: Path, model_key: str) -> None:
    """An index as vitkit wrote it before schema 2 (no failures table, no model_ref)."""
    from vitkit.retrieval.schema import MIGRATIONS

    folder.mkdir()
    (folder / "vectors.f16").write_bytes(unit_vectors(1).astype("<f2").tobytes())
    with sqlite3.connect(folder / DB_NAME) as conn:
        for statement in MIGRATIONS[0]:
            conn.execute(statement)
        conn.executemany("INSERT INTO meta VALUES (?, ?)", [("model_key", model_key), ("dim", str(DIM)),
                                                            ("generation", "0")])
        conn.execute("INSERT INTO vectors VALUES (0, 'h0')")
        conn.execute("INSERT INTO files VALUES ('/p/a.png', 1, 1, 'h0', 0, 6, 4)")
        conn.execute("PRAGMA user_version = 1")


def test_a_schema_1_index_is_read_as_is_and_migrated_by_the_writer(tmp_path: Path) -> None:
    key = "open_clip:local-dir:/models/clip#0123456789abcdef"
    _make_version_1_index(tmp_path / "idx", key)
    with VectorIndex.open_for_reading(tmp_path / "idx", key) as reader:
        assert reader.failures() == [] and reader.model_ref == "/models/clip"
        assert [h.path for h in reader.search(unit_vectors(1)[0], k=3)[0]] == ["/p/a.png"]
    with pytest.raises(IndexModelMismatchError) as caught:
        VectorIndex.open_for_reading(tmp_path / "idx", "open_clip:local-dir:/models/other#1", "/models/other")
    assert "--model /models/clip" in caught.value.hint and "rebuild=True" in caught.value.hint
    with VectorIndex.open_for_writing(tmp_path / "idx", key, model_ref="/models/clip") as index:
        assert index.dim == DIM  # dim=None takes the index's own: no model needed to plan
        assert index.known_paths() == {"/p/a.png"}
        index.record_failures([Failure("/p/b.png", 1, 1, "broken")])
    with sqlite3.connect(tmp_path / "idx" / DB_NAME) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    with pytest.raises(IndexSchemaError, match="no index at"):
        VectorIndex.open_for_writing(tmp_path / "new", key)  # a new index needs the model's dim


def test_mismatch_hint_names_a_model_value_that_works(tmp_path: Path) -> None:
    with VectorIndex.open_for_writing(tmp_path / "idx", "open_clip:hf-hub:org/clip-a", DIM, model_ref="clip-a"):
        pass
    for open_index in (lambda: VectorIndex.open_for_reading(tmp_path / "idx", "open_clip:hf-hub:org/clip-b", "clip-b"),
                       lambda: VectorIndex.open_for_writing(tmp_path / "idx", "open_clip:hf-hub:org/clip-b", DIM,
                                                            model_ref="clip-b")):
        with pytest.raises(IndexModelMismatchError, match="built with open_clip:hf-hub:org/clip-a, not") as caught:
            open_index()
        assert "--model clip-a (model='clip-a' in Python)" in caught.value.hint
        assert "--rebuild" in caught.value.hint and "open_clip:" not in caught.value.hint
