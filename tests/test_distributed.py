"""--shard I/N, torchrun with 2 CPU processes (gloo), and merging shard indexes.

Every run uses --batch-size 1 and one thread: BLAS results depend on batch composition and thread
count in the last bits, and these tests compare sharded and distributed runs with a single-process
run for exact equality, so only the sharding may differ between them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import SAMPLE_ERRORS, copy_mixed_samples, parse_jsonl

BATCH = ("--batch-size", "1", "--workers", "0")


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def vitkit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vitkit", *args], capture_output=True, text=True,
                          env=_env(), timeout=300)


def torchrun(*args: str, input: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node 2 -m vitkit ...`: a free port is picked by the rendezvous."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "vitkit", *args]
    return subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=timeout, input=input)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The mixed samples plus one more broken file sorting last, so both torchrun ranks meet broken files."""
    target = copy_mixed_samples(tmp_path_factory.mktemp("dist") / "photos")
    shutil.copy(SAMPLE_ERRORS / "truncated.jpg", target / "zz_truncated.jpg")
    return target


@pytest.fixture(scope="module")
def classify_args(photos: Path, tiny_timm_dir: Path) -> tuple[str, ...]:
    return ("classify", str(photos), "--model", str(tiny_timm_dir), "-f", "jsonl", "--top-k", "3", *BATCH)


@pytest.fixture(scope="module")
def single_classify(classify_args: tuple[str, ...]) -> list[dict]:
    result = vitkit(*classify_args)
    assert result.returncode == 1, result.stderr
    records = parse_jsonl(result.stdout)
    assert len(records) == 10 and sum("error" in r for r in records) == 4
    return records


def test_shards_concatenate_to_the_unsharded_run(classify_args: tuple[str, ...], single_classify: list[dict]) -> None:
    combined = []
    for index in range(3):
        result = vitkit(*classify_args, "--shard", f"{index}/3")
        records = parse_jsonl(result.stdout)
        assert result.returncode == (1 if any("error" in r for r in records) else 0), result.stderr
        combined += records
    assert combined == single_classify


@pytest.mark.parametrize("text", ["3/3", "0/0", "1", "a/b", "-1/2", "1/2/3"])
def test_bad_shard_values_are_usage_errors(text: str) -> None:
    from vitkit.errors import UsageError
    from vitkit.runtime.sharding import parse_shard

    with pytest.raises(UsageError, match="--shard"):
        parse_shard(text)


def test_bad_shard_on_the_command_line_exits_2(photos: Path, tiny_timm_dir: Path) -> None:
    result = vitkit("classify", str(photos), "--model", str(tiny_timm_dir), "--shard", "4/4")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "vitkit: error: --shard 4/4: I must be in 0..N-1" in result.stderr


def test_torchrun_classify_matches_single_process(classify_args: tuple[str, ...], single_classify: list[dict],
                                                  photos: Path) -> None:
    result = torchrun(*classify_args)
    assert result.returncode == 1, result.stderr  # torchrun's own code: 1 when rank 0 exits non-zero
    assert parse_jsonl(result.stdout) == single_classify
    error_lines = [line for line in result.stderr.splitlines() if "error: " in line and "vitkit:" not in line]
    broken = sorted(r["path"] for r in single_classify if "error" in r)
    assert sorted(line.split("error: ")[1].rsplit(": ", 1)[0] for line in error_lines) == broken
    # The last file falls to rank 1, which reports it itself; rank 0 counts it in the job's summary.
    assert f"[rank 1] error: {photos / 'zz_truncated.jpg'}: " in result.stderr
    assert "4 of 10 inputs failed" in result.stderr
    # The job's one-line summary comes after every rank's lines, so it is what a user reads above
    # torchrun's own ChildFailedError report.
    lines = result.stderr.splitlines()
    summary = next(i for i, line in enumerate(lines) if "4 of 10 inputs failed" in line)
    assert summary > max(i for i, line in enumerate(lines) if "error: " in line)


def test_torchrun_reads_files_from_stdin_once_and_a_rank_may_have_nothing(single_classify: list[dict],
                                                                         tiny_timm_dir: Path) -> None:
    """Only rank 0 reads --files-from - (the ranks share one stdin) and sends the list on; with a
    single input, rank 1 gets no inputs and must still take part and exit cleanly."""
    paths = [r["path"] for r in single_classify]
    common = ("--model", str(tiny_timm_dir), "-f", "jsonl", "--top-k", "3", *BATCH)
    from_stdin = torchrun("classify", "--files-from", "-", *common, input="\n".join(paths) + "\n")
    assert from_stdin.returncode == 1, from_stdin.stderr
    assert parse_jsonl(from_stdin.stdout) == single_classify
    first_good = next(r for r in single_classify if "error" not in r)
    one_input = torchrun("classify", first_good["path"], *common)
    assert one_input.returncode == 0, one_input.stderr
    assert parse_jsonl(one_input.stdout) == [first_good]


def test_torchrun_resume_skips_what_the_output_already_has(classify_args: tuple[str, ...],
                                                           single_classify: list[dict], tmp_path: Path) -> None:
    """Rank 0 reads the --resume file and tells rank 1 what to skip: a rerun only retries the failures."""
    out = tmp_path / "out.jsonl"
    good = [r for r in single_classify if "error" not in r]
    out.write_text("".join(json.dumps(r) + "\n" for r in good[:3]))
    result = torchrun(*classify_args, "-o", str(out), "--resume")
    assert result.returncode == 1, result.stderr
    counts = [int(part.split()[0]) for part in result.stderr.split("resume: ")[1:]]
    assert sum(counts) == 3 and len(counts) == 2  # each rank says what it skipped of its part
    records = parse_jsonl(out.read_text())
    assert sorted(r["path"] for r in records) == sorted(r["path"] for r in single_classify)
    assert sorted(records, key=lambda r: r["path"]) == sorted(single_classify, key=lambda r: r["path"])


def test_one_process_commands_refuse_torchrun(tiny_open_clip_dir: Path, tmp_path: Path) -> None:
    result = torchrun("search", "--text", "a cat", "--model", str(tiny_open_clip_dir), "--index", str(tmp_path),
                      timeout=120)
    assert result.returncode != 0
    assert "`vitkit search` does not run under torchrun" in result.stderr


def _index_contents(folder: Path) -> tuple[list[str], np.ndarray]:
    from vitkit.retrieval.index import VectorIndex

    with VectorIndex.open_for_reading(folder) as index:
        hits = index.search(np.ones(index.dim, dtype=np.float32), k=100)[0]
        paths = sorted(hit.path for hit in hits)
        snapshot = index._snapshot()
        vectors = np.stack([np.asarray(snapshot.vectors[snapshot.rows[snapshot.paths.index(p)]], np.float32)
                            for p in paths])
    return paths, vectors


@pytest.fixture(scope="module")
def index_args(photos: Path, tiny_open_clip_dir: Path) -> tuple[str, ...]:
    return ("index", str(photos), "--model", str(tiny_open_clip_dir), "-f", "jsonl", *BATCH)


@pytest.fixture(scope="module")
def single_index(index_args: tuple[str, ...], tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], np.ndarray]:
    folder = tmp_path_factory.mktemp("single") / "index"
    result = vitkit(*index_args, "--index", str(folder))
    assert result.returncode == 1, result.stderr
    assert parse_jsonl(result.stdout)[0]["added"] == 6
    return _index_contents(folder)


def test_torchrun_index_matches_single_process(index_args: tuple[str, ...], single_index: tuple, tmp_path: Path) -> None:
    result = torchrun(*index_args, "--index", str(tmp_path / "index"))
    assert result.returncode == 1, result.stderr
    [row] = parse_jsonl(result.stdout)  # rank 0 alone reports
    assert (row["added"], row["failed"]) == (6, 4)
    paths, vectors = _index_contents(tmp_path / "index")
    assert paths == single_index[0]
    np.testing.assert_allclose(vectors, single_index[1], atol=1e-3)


def test_shard_indexes_merge_into_the_single_process_index(index_args: tuple[str, ...], single_index: tuple,
                                                           tmp_path: Path) -> None:
    a, b, merged = tmp_path / "a", tmp_path / "b", tmp_path / "merged"
    assert vitkit(*index_args, "--shard", "0/2", "--index", str(a)).returncode == 1
    assert vitkit(*index_args, "--shard", "1/2", "--index", str(b)).returncode == 1
    result = vitkit("index", "--merge-from", str(a), "--merge-from", str(b), "--index", str(merged), "-f", "jsonl")
    assert result.returncode == 0, result.stderr
    assert parse_jsonl(result.stdout) == [{"index": str(merged), "added": 6, "replaced": 0, "unchanged": 0, "kept": 0}]
    paths, vectors = _index_contents(merged)
    assert paths == single_index[0]
    np.testing.assert_allclose(vectors, single_index[1], atol=1e-3)

    # Indexing shard 1 into shard 0's folder must not sweep shard 0's files: they still exist.
    result = vitkit(*index_args, "--shard", "1/2", "--index", str(a))
    assert parse_jsonl(result.stdout)[0]["removed"] == 0
    assert _index_contents(a)[0] == single_index[0]


def test_merge_refuses_a_shard_from_another_model(tmp_path: Path) -> None:
    from vitkit.retrieval.index import VectorIndex

    for name, key in (("one", "timm:model-a"), ("two", "timm:model-b")):
        VectorIndex.open_for_writing(tmp_path / name, key, 4).close()
    result = vitkit("index", "--merge-from", str(tmp_path / "one"), "--merge-from", str(tmp_path / "two"),
                    "--index", str(tmp_path / "target"))
    assert result.returncode == 2
    assert f"index {tmp_path / 'two'} was built with timm:model-b, not timm:model-a" in result.stderr
    assert not (tmp_path / "target").exists()


def test_merge_keeps_the_newest_mtime_and_the_last_shard_on_ties(tmp_path: Path) -> None:
    from vitkit.retrieval.index import Entry, FileState, VectorIndex

    def shard(name: str, entries: list[tuple[str, int, str, list[float]]]) -> VectorIndex:
        with VectorIndex.open_for_writing(tmp_path / name, "k", 2) as index:
            index.add([Entry(FileState(path, 1, mtime), digest, np.array(v, np.float32), 1, 1)
                       for path, mtime, digest, v in entries])
        return VectorIndex.open_for_reading(tmp_path / name)

    first = shard("first", [("/p/new", 20, "a", [1, 0]), ("/p/tie", 10, "b", [1, 0]), ("/p/only", 5, "c", [0, 1])])
    second = shard("second", [("/p/new", 10, "d", [0, 1]), ("/p/tie", 10, "e", [0, 1])])
    with VectorIndex.open_for_writing(tmp_path / "target", "k", 2) as target:
        counts = [target.merge_from(first), target.merge_from(second), target.merge_from(second)]
        hits = {hit.path: hit.score for hit in target.search(np.array([1, 0], np.float32), k=10)[0]}
    assert [(c.added, c.replaced, c.unchanged, c.kept) for c in counts] == [(3, 0, 0, 0), (0, 1, 0, 1), (0, 0, 1, 1)]
    assert hits == pytest.approx({"/p/new": 1.0, "/p/tie": 0.0, "/p/only": 0.0})
    first.close()
    second.close()
