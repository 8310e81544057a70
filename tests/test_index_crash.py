"""kill -9 in the middle of `vitkit index`: nothing committed is lost, the rerun finishes without duplicates."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.conftest import parse_jsonl
from vitkit.cli import app

N_IMAGES = 300


@pytest.fixture(scope="module")
def many_photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / f"img{i:04d}.png")
    return folder


def count_files(index_dir: Path, read_only: bool = True) -> int:
    db = index_dir / "index.sqlite"
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode={'ro' if read_only else 'rw'}", uri=True, timeout=0.1) as conn:
            return conn.execute("SELECT COUNT(*) FROM files").fetchone()[0]
    except sqlite3.Error:
        return 0


def search_all(model: Path, index_dir: Path, text: str) -> list[tuple[str, float]]:
    result = CliRunner().invoke(app, ["search", "--text", text, "-k", str(N_IMAGES * 2), "--model", str(model),
                                      "--index", str(index_dir)])
    assert result.exit_code == 0, result.stderr
    return [(r["path"], r["score"]) for r in parse_jsonl(result.stdout)]


def test_sigkill_mid_run_then_rerun(many_photos: Path, tiny_open_clip_dir: Path, tmp_path: Path) -> None:
    index_dir = tmp_path / "idx"
    command = [sys.executable, "-m", "vitkit", "index", str(many_photos), "--model", str(tiny_open_clip_dir),
               "--index", str(index_dir), "-b", "1", "--workers", "0", "--quiet"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
    deadline = time.monotonic() + 120
    while count_files(index_dir) < 5 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the indexer finished before it could be killed"
    # A kill between writing a commit to the WAL and updating the shared WAL index leaves a commit that
    # read-only readers miss until a read-write connection recovers the WAL, as the rerun will.
    committed = count_files(index_dir, read_only=False)
    assert 5 <= committed < N_IMAGES

    rerun = subprocess.run(command[:-1] + ["--format", "json"], capture_output=True, text=True,
                           env=os.environ.copy(), timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert '"added": %d' % (N_IMAGES - committed) in rerun.stdout
    assert count_files(index_dir) == N_IMAGES

    clean_dir = tmp_path / "clean"
    clean = subprocess.run(command[:-1][:7] + ["--index", str(clean_dir), "-b", "1", "--workers", "0"],
                           capture_output=True, text=True, env=os.environ.copy(), timeout=300)
    assert clean.returncode == 0, clean.stderr
    for query in ("a photo", "noise"):
        resumed, fresh = search_all(tiny_open_clip_dir, index_dir, query), search_all(tiny_open_clip_dir, clean_dir, query)
        assert len(resumed) == N_IMAGES and len({p for p, _ in resumed}) == N_IMAGES  # each image exactly once
        assert dict(resumed) == dict(fresh)  # identical vectors: identical scores for every path
