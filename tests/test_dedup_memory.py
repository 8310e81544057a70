"""Dedup's grouping never builds an n x n matrix: peak memory on synthetic vectors, from benchmarks/dedup.py."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO_ROOT


def test_grouping_memory_stays_far_below_n_squared_and_finds_the_planted_duplicates(tmp_path) -> None:
    count = 12_000  # an n x n float32 matrix of scores would be 549 MiB
    done = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "dedup.py"), "--count", str(count), "--dim", "64",
                           "--threads", "1", "--json", "--dir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["planted"] > 100
    assert result["near_recall"] == 1.0 and result["linked_recall"] == 1.0
    assert result["unplanted_items_linked"] == 0
    grouping_mb = result["peak_rss_mb"] - result["rss_before_grouping_mb"]
    # One 2048 x 8192 float32 block of scores (64 MiB) and its top-k temporaries, the running top-k
    # (n x 16 scores and items) and the links: bounded, whatever n is.
    assert grouping_mb < 0.3 * result["n_squared_float32_mb"], result
