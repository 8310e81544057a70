"""Search without a snapshot (the files(row) index): new and old-layout folders, revived content after a
SIGKILL before the ANN write, an index run during a search's ANN save, and dedup's one-transaction read."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from tests.test_ann import DIM, MODEL, N, always_ann, assert_same, both, build, clustered, entry, live_rows, saved_rows
from vitkit.retrieval import ann, approximate
from vitkit.retrieval.dedup import read_catalogue
from vitkit.retrieval.index import open_reader, open_writer
from vitkit.retrieval.schema import ROW_INDEX

__all__ = ["always_ann"]  # the fixture, shared with test_ann.py


def has_row_index(folder: Path) -> bool:
    with sqlite3.connect(folder / "index.sqlite") as conn:
        return conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (ROW_INDEX,)).fetchone() is not None


def test_a_new_index_searches_without_loading_a_snapshot(tmp_path: Path, always_ann: list[int]) -> None:
    folder = tmp_path / "idx"
    vectors = clustered(N)
    build(folder, tmp_path, vectors)
    assert has_row_index(folder)
    with open_reader(folder, MODEL) as reader:
        approx = reader.search(vectors[:6], k=10)
        exact = reader.search(vectors[:6], k=10, exact=True)
        assert reader._snapshot_cache is None  # every path came from a lookup by row
    assert always_ann
    assert_same(approx, exact)


def test_an_old_layout_folder_is_searched_and_gains_the_index_when_a_writer_opens_it(
        tmp_path: Path, always_ann: list[int]) -> None:
    folder = tmp_path / "idx"
    vectors = clustered(N)
    paths = build(folder, tmp_path, vectors)
    with sqlite3.connect(folder / "index.sqlite") as conn:
        conn.execute(f"DROP INDEX {ROW_INDEX}")  # as every index written before it existed
    approx, exact = both(folder, vectors[:6])  # through snapshots, as before
    assert_same(approx, exact)
    with open_writer(folder, MODEL, DIM) as writer:
        writer.remove_paths([paths[1]])
    assert has_row_index(folder)
    with open_reader(folder, MODEL) as reader:
        found = reader.search(vectors[:6], k=10)
        assert reader._snapshot_cache is None
    assert_same(found, both(folder, vectors[:6])[1])
    assert paths[1] not in {hit.path for hits in found for hit in hits}


def test_revived_content_is_found_after_a_sigkill_before_the_ann_write(tmp_path: Path, always_ann: list[int]) -> None:
    """A file whose content no file used any more comes back: it gets a new row past the ANN file's rows,
    so a search finds it even though the ANN file was never told."""
    folder = tmp_path / "idx"
    vectors = clustered(N)
    paths = build(folder, tmp_path, vectors)
    with open_writer(folder, MODEL, DIM) as writer:
        writer.remove_paths([paths[7]])  # its row dies and leaves the ANN file
    before = saved_rows(folder)
    revived = str(tmp_path / "c" / "back.jpg")
    child = textwrap.dedent(f"""
        import os, signal
        from vitkit.retrieval import ann
        from vitkit.retrieval.index import Entry, FileState, open_writer

        ann.save = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
        with open_writer({str(folder)!r}, {MODEL!r}, {DIM}) as index:
            index.add([Entry(FileState({revived!r}, 1, 1), "h7")])  # known content: no vector passed
    """)
    env = {**os.environ, approximate.ANN_MIN_FILES_ENV: "0"}
    done = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert saved_rows(folder) == before and 7 not in before
    assert live_rows(folder) - before == {N}  # a new row, not row 7 brought back
    approx, exact = both(folder, vectors[[7, 8]])
    assert_same(approx, exact)
    assert approx[0][0].path == revived
    assert approx[0][0].score == pytest.approx(1.0, abs=1e-3)


def test_an_index_run_during_a_searchs_ann_save_does_not_fail(tmp_path: Path, always_ann: list[int],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "idx"
    vectors = clustered(N)
    build(folder, tmp_path, vectors)
    (folder / ann.ANN_NAME).unlink()  # the search rebuilds it and saves it
    original_save = ann.save
    added = threading.Event()
    failures: list[BaseException] = []

    def index_run() -> None:
        try:
            with open_writer(folder, MODEL, DIM) as writer:  # no wait: it must not find the index locked
                writer.add([entry(tmp_path / "c" / "during.jpg", clustered(1, seed=9)[0], "during")])
                added.set()
        except BaseException as error:  # reported by the test below
            failures.append(error)
            added.set()

    runner = threading.Thread(target=index_run)

    def save_while_a_writer_runs(*args) -> None:
        if not runner.is_alive() and not added.is_set():  # the search's save: a writer starts meanwhile
            runner.start()
            assert added.wait(60)
        original_save(*args)

    monkeypatch.setattr(ann, "save", save_while_a_writer_runs)
    with open_reader(folder, MODEL) as reader:
        reader.warn = lambda text: None  # the rebuild's warning is tested in test_ann.py
        reader.search(vectors[:2], k=5)
    runner.join(120)
    assert not failures, failures
    assert saved_rows(folder) == live_rows(folder)  # the writer synced the search's file after it


def test_dedup_reads_its_catalogue_from_one_committed_state(tmp_path: Path) -> None:
    folder = tmp_path / "idx"
    vectors = clustered(40)
    paths = build(folder, tmp_path, vectors)
    with open_reader(folder, MODEL) as reader:
        original = reader.stored_entries

        def removed_meanwhile(batch):  # a writer commits between the snapshot and the details
            with open_writer(folder, MODEL, DIM) as writer:
                writer.remove_paths([paths[3]])
            return original(batch)

        reader.stored_entries = removed_meanwhile
        snapshot, catalogue = read_catalogue(reader, None)
    assert catalogue.paths == snapshot.paths == sorted(paths)
    assert catalogue.hashes[catalogue.paths.index(paths[3])] == "h3"
