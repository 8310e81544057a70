"""Approximate search: equal to exact search at generous settings, consistent with SQLite through adds,
changes, deletes, renames and a SIGKILL before the ANN write, rebuilt (with a warning) when damaged or
missing, true top-k inside folders, and end to end through `vitkit index` + `vitkit search`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.conftest import GOOD_SAMPLES, SAMPLE_DATA, parse_jsonl
from vitkit.cli import app
from vitkit.retrieval import ann, approximate
from vitkit.retrieval.index import Entry, FileState, open_reader, open_writer

DIM = 32
N = 1500
MODEL = "test-clustered"


@pytest.fixture
def always_ann(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every index searched approximately, at settings where recall must be 1.0 (every list scanned, a
    pool bigger than the index); returns a list that grows by one per ANN scan, to prove it was used."""
    monkeypatch.setenv(approximate.ANN_MIN_FILES_ENV, "0")
    monkeypatch.setattr(approximate, "PROBE_SHARE", 1.0)
    monkeypatch.setattr(approximate, "POOL", 4 * N)
    scans: list[int] = []
    original = ann.AnnIndex.search

    def counting(self, *args, **kwargs):
        scans.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ann.AnnIndex, "search", counting)
    return scans


def clustered(count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, DIM))
    scales = np.linspace(0.6, 0.05, DIM)  # anisotropic, like image embeddings
    return (centres[rng.integers(0, 40, count)] + rng.standard_normal((count, DIM)) * scales).astype(np.float32)


def entry(path: Path | str, vector: np.ndarray, digest: str) -> Entry:
    return Entry(FileState(str(path), 1, 1), digest, vector)


def build(folder: Path, root: Path, vectors: np.ndarray) -> list[str]:
    """Index `vectors` as files spread over three folders under `root`; returns their paths."""
    paths = [str(root / ("a" if i < 100 else "b" if i < 700 else "c") / f"{i:05d}.jpg") for i in range(len(vectors))]
    with open_writer(folder, MODEL, DIM) as index:
        index.add([entry(p, v, f"h{i}") for i, (p, v) in enumerate(zip(paths, vectors))])
    return paths


def both(folder: Path, queries: np.ndarray, k: int = 10, under: list[str] | None = None) -> tuple[list, list]:
    with open_reader(folder, MODEL) as reader:
        warnings: list[str] = []
        reader.warn = warnings.append
        approx = reader.search(queries, k=k, under=under)
        exact = reader.search(queries, k=k, under=under, exact=True)
    assert not warnings
    return approx, exact


def assert_same(approx: list, exact: list) -> None:
    for got, want in zip(approx, exact, strict=True):
        assert [h.path for h in got] == [h.path for h in want]
        np.testing.assert_allclose([h.score for h in got], [h.score for h in want], atol=1e-5)


def saved_rows(folder: Path, model: str = MODEL, dim: int = DIM) -> set[int]:
    loaded, reason = ann.load(folder, model, dim, 0)
    assert loaded is not None, reason
    return set(loaded.rows.tolist())


def live_rows(folder: Path) -> set[int]:
    import sqlite3

    with sqlite3.connect(folder / "index.sqlite") as conn:
        return {row for (row,) in conn.execute("SELECT DISTINCT row FROM files")}


def test_ann_equals_exact_on_clustered_data(tmp_path: Path, always_ann: list[int]) -> None:
    vectors = clustered(N)
    build(tmp_path / "idx", tmp_path, vectors)
    assert (tmp_path / "idx" / ann.ANN_NAME).is_file()
    queries = clustered(20, seed=1) + 0.3  # shifted away from the images, as text queries are
    approx, exact = both(tmp_path / "idx", queries)
    assert len(always_ann) == 20
    assert_same(approx, exact)


def test_default_settings_find_a_files_own_vector(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(approximate.ANN_MIN_FILES_ENV, "0")
    vectors = clustered(N)
    paths = build(tmp_path / "idx", tmp_path, vectors)
    with open_reader(tmp_path / "idx", MODEL) as reader:
        for i in range(0, N, 97):
            [[best, *_]] = reader.search(vectors[i], k=5)
            assert best.path == paths[i]


def test_updates_keep_ann_consistent_with_sqlite(tmp_path: Path, always_ann: list[int]) -> None:
    folder = tmp_path / "idx"
    vectors = clustered(N)
    paths = build(folder, tmp_path, vectors)
    trained = ann.load(folder, MODEL, DIM, 0)[0].header.trained_on
    extra = clustered(5, seed=2)
    with open_writer(folder, MODEL, DIM) as index:  # add, change, delete, rename
        index.add([entry(tmp_path / "b" / f"new{i}.jpg", v, f"new{i}") for i, v in enumerate(extra)])
        index.add([entry(paths[10], extra[0] * -1, "changed10")])
        index.remove_paths([paths[20], paths[800]])
        index.remove_paths([paths[30]])
        index.add([entry(tmp_path / "c" / "renamed30.jpg", None, "h30")])  # same content: reuses the row
    assert saved_rows(folder) == live_rows(folder)
    assert ann.load(folder, MODEL, DIM, 0)[0].header.trained_on == trained  # updated, not retrained
    queries = np.concatenate([vectors[[10, 20, 30, 800]], extra, -extra[:1]])
    approx, exact = both(folder, queries)
    assert_same(approx, exact)
    returned = {h.path for hits in approx for h in hits}
    assert not returned & {paths[20], paths[800], paths[30]}
    assert approx[2][0].path == str(tmp_path / "c" / "renamed30.jpg")
    assert approx[-1][0].path == paths[10]  # found by its new vector


def test_sigkill_between_commit_and_ann_write(tmp_path: Path, always_ann: list[int]) -> None:
    folder = tmp_path / "idx"
    vectors = clustered(N)
    paths = build(folder, tmp_path, vectors)
    before = saved_rows(folder)
    new_vector = clustered(1, seed=3)[0]
    np.save(tmp_path / "new.npy", new_vector)
    child = textwrap.dedent(f"""
        import os, signal, numpy as np
        from vitkit.retrieval import ann
        from vitkit.retrieval.index import Entry, FileState, open_writer

        def killed(*args):  # SQLite has committed; the ANN file is about to be written
            os.kill(os.getpid(), signal.SIGKILL)

        ann.save = killed
        with open_writer({str(folder)!r}, {MODEL!r}, {DIM}) as index:
            index.remove_paths([{paths[5]!r}, {paths[900]!r}])
            index.add([Entry(FileState({str(tmp_path / "c" / "new.jpg")!r}, 1, 1), "new",
                             np.load({str(tmp_path / "new.npy")!r}))])
    """)
    env = {**os.environ, approximate.ANN_MIN_FILES_ENV: "0"}
    done = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert saved_rows(folder) == before  # the ANN file still holds the deleted files' rows
    assert live_rows(folder) != before
    approx, exact = both(folder, np.stack([vectors[5], vectors[900], new_vector]))
    assert_same(approx, exact)
    returned = {h.path for hits in approx for h in hits}
    assert paths[5] not in returned and paths[900] not in returned
    assert approx[2][0].path == str(tmp_path / "c" / "new.jpg")  # committed but not in the ANN file: still found


@pytest.mark.parametrize("damage", ["corrupt", "missing", "other faiss"])
def test_damaged_or_missing_ann_is_rebuilt_with_a_warning(tmp_path: Path, always_ann: list[int], damage: str) -> None:
    folder = tmp_path / "idx"
    vectors = clustered(N)
    build(folder, tmp_path, vectors)
    path = folder / ann.ANN_NAME
    if damage == "corrupt":
        data = bytearray(path.read_bytes())
        data[-5000:-4000] = os.urandom(1000)
        path.write_bytes(bytes(data))
    elif damage == "missing":
        path.unlink()
    else:
        data = path.read_bytes()  # magic line, header length, JSON header, faiss payload
        length = int.from_bytes(data[8:12], "little")
        header = json.loads(data[12:12 + length]) | {"faiss": "0.1"}
        encoded = json.dumps(header).encode()
        path.write_bytes(data[:8] + len(encoded).to_bytes(4, "little") + encoded + data[12 + length:])
    with open_reader(folder, MODEL) as reader:
        warnings: list[str] = []
        reader.warn = warnings.append
        approx = reader.search(vectors[:5], k=10)
        exact = reader.search(vectors[:5], k=10, exact=True)
    [warning] = warnings
    assert {"corrupt": "damaged", "missing": "missing", "other faiss": "out of date"}[damage] in warning
    assert "rebuilding" in warning
    assert_same(approx, exact)
    assert saved_rows(folder) == live_rows(folder)  # the reader saved the rebuilt index


def test_folder_restriction_returns_the_true_top_k_inside(tmp_path: Path, always_ann: list[int],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "idx"
    vectors = clustered(N)
    build(folder, tmp_path, vectors)
    queries = clustered(10, seed=4)
    # A pool of 150 candidates from all 1500 files would hold about 10 of folder a's 100: the top 10
    # inside it come out exactly only if the scan itself keeps to the folder.
    monkeypatch.setenv(approximate.ANN_MIN_FILES_ENV, "50")
    for under, pool in (([str(tmp_path / "a")], 150), ([str(tmp_path / "b"), str(tmp_path / "c")], 4 * N)):
        monkeypatch.setattr(approximate, "POOL", pool)
        always_ann.clear()
        approx, exact = both(folder, queries, under=under)
        assert always_ann
        assert_same(approx, exact)
        assert all(h.path.startswith(tuple(u + os.sep for u in under)) for hits in approx for h in hits)
    monkeypatch.setenv(approximate.ANN_MIN_FILES_ENV, "700")
    for under, via_ann in (([str(tmp_path / "b")], False),):  # 600 files: fewer than the threshold
        always_ann.clear()
        approx, exact = both(folder, queries, under=under)
        assert bool(always_ann) == via_ann  # a restriction to fewer files than the threshold is searched exactly
        assert_same(approx, exact)
        assert all(h.path.startswith(under[0] + os.sep) for hits in approx for h in hits)


def test_small_index_is_searched_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(approximate.ANN_MIN_FILES_ENV, str(N + 1))
    build(tmp_path / "idx", tmp_path, clustered(N))
    assert not (tmp_path / "idx" / ann.ANN_NAME).exists()
    with open_reader(tmp_path / "idx", MODEL) as reader:
        reader.search(clustered(1)[0], k=3)
        assert reader._ann_cache is None


def test_index_and_search_cli_use_the_ann(tmp_path: Path, tiny_open_clip_dir: Path, always_ann: list[int]) -> None:
    import shutil

    import vitkit

    photos = tmp_path / "photos"
    photos.mkdir()
    for sample in GOOD_SAMPLES:
        shutil.copy(SAMPLE_DATA / sample, photos / sample)
    index_dir = tmp_path / "idx"
    runner = CliRunner()
    model = ["--model", str(tiny_open_clip_dir), "--index", str(index_dir)]
    result = runner.invoke(app, ["index", str(photos), *model, "--format", "json"])
    assert result.exit_code == 0, result.stderr
    assert (index_dir / ann.ANN_NAME).is_file()

    def search(*extra: str) -> list[dict]:
        found = runner.invoke(app, ["search", "--text", "a photo", "-k", "3", *model, "--format", "jsonl", *extra])
        assert found.exit_code == 0, found.stderr
        return parse_jsonl(found.stdout)

    approx = search()
    assert always_ann and len(approx) == 3
    always_ann.clear()
    assert same_hits(search("--exact"), approx) and not always_ann
    gone = Path(approx[0]["path"])
    gone.unlink()
    after = search(str(photos))  # re-indexes the folder first: the deleted file goes, the ANN follows
    assert str(gone) not in {hit["path"] for hit in after}
    assert same_hits(after, search(str(photos), "--exact"))
    with open_reader(index_dir) as reader:
        assert saved_rows(index_dir, reader.model_key, reader.dim) == live_rows(index_dir)
    library = [dict(hit) for hit in vitkit.search("a photo", top_k=3, model=str(tiny_open_clip_dir),
                                                  index_dir=str(index_dir), exact=True)]
    assert same_hits(library, after)
    assert json.loads(json.dumps(library))  # plain values


def same_hits(got: list[dict], want: list[dict]) -> bool:
    return [(h["rank"], h["path"], round(h["score"], 5)) for h in got] == [
        (h["rank"], h["path"], round(h["score"], 5)) for h in want]


def test_compaction_and_rebuild_replace_the_ann_without_a_warning(tmp_path: Path, always_ann: list[int],
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "idx"
    vectors = clustered(N)
    paths = build(folder, tmp_path, vectors)
    with open_writer(folder, MODEL, DIM) as index:
        index.remove_paths(paths[::2])
        index.compact()  # renumbers the rows: a new generation, so a new ANN file
    loaded, reason = ann.load(folder, MODEL, DIM, 1)
    assert loaded is not None, reason
    assert set(loaded.rows.tolist()) == live_rows(folder)
    assert_same(*both(folder, vectors[:8]))
    with open_writer(folder, MODEL, DIM, rebuild=True) as index:
        index.add([entry(p, v, f"r{i}") for i, (p, v) in enumerate(zip(paths[:300], vectors[:300]))])
    assert_same(*both(folder, vectors[:8]))
    assert "warning" not in capsys.readouterr().err


def test_a_reader_open_across_a_compaction_follows_the_new_generation(tmp_path: Path, always_ann: list[int]) -> None:
    """A compaction renumbers the rows: a reader opened before it must judge the ANN file by the generation
    of the snapshot it searches, neither trusting its old copy nor overwriting the writer's new file."""
    folder = tmp_path / "idx"
    vectors = clustered(N)
    paths = build(folder, tmp_path, vectors)
    with open_reader(folder, MODEL) as reader:  # opened at generation 0
        warnings: list[str] = []
        reader.warn = warnings.append
        with open_writer(folder, MODEL, DIM) as writer:
            writer.remove_paths(paths[::2])
            writer.compact()
        approx = reader.search(vectors[:8], k=10)
        exact = reader.search(vectors[:8], k=10, exact=True)
    assert_same(approx, exact)
    assert not warnings  # the writer's generation-1 file was current: nothing to rebuild
    loaded, reason = ann.load(folder, MODEL, DIM, 1)
    assert loaded is not None, reason
    assert set(loaded.rows.tolist()) == live_rows(folder)


def test_known_content_under_a_new_name_keeps_its_pixel_size(tmp_path: Path) -> None:
    """A renamed, touched or copied file reuses the stored vector without decoding: it must still carry
    the picture's size, or dedup's --keep largest would prefer a smaller copy over the original."""
    import sqlite3

    folder = tmp_path / "idx"
    vector = clustered(1)[0]
    with open_writer(folder, MODEL, DIM) as index:
        index.add([Entry(FileState("/p/original.jpg", 1, 1), "h-original", vector, 4000, 3000)])
    with open_writer(folder, MODEL, DIM) as index:
        index.add([Entry(FileState("/p/renamed.jpg", 1, 2), "h-original"),  # reused: no vector, no size
                   Entry(FileState("/p/original.jpg", 1, 3), "h-original")])  # touched
    with sqlite3.connect(folder / "index.sqlite") as conn:
        sizes = dict((path, (w, h)) for path, w, h in conn.execute("SELECT path, width, height FROM files"))
    assert sizes == {"/p/original.jpg": (4000, 3000), "/p/renamed.jpg": (4000, 3000)}
