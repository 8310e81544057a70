"""benchmarks/memory.py stays runnable: one small command end to end, and its two ways of reading peak memory agree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT

BENCHMARKS = REPO_ROOT / "benchmarks"


def test_memory_benchmark_measures_a_real_classify_run() -> None:
    result = subprocess.run([sys.executable, "benchmarks/memory.py", "--only", "classify", "--size", "640x480",
                             "--json"], capture_output=True, text=True, cwd=REPO_ROOT, env=os.environ.copy(),
                            timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    baseline, classify = report["rows"]
    assert (baseline["case"], classify["case"]) == ("imports only", "classify")
    assert baseline["error"] is None and classify["error"] is None
    assert (classify["images"], classify["batch_size"], classify["meets_target"]) == (1, 1, "-")
    # A process that imported torch holds well over 100 MB; classifying on top of that costs more still.
    assert 100_000 < baseline["peak_kib"] < classify["peak_kib"] < 4_000_000
    assert classify["seconds"] > 0
    assert "machine:" in result.stderr  # the header goes to stderr with --json, so stdout parses


def test_vmhwm_fallback_agrees_with_gnu_time(tmp_path: Path) -> None:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import memory
    finally:
        sys.path.remove(str(BENCHMARKS))
    timer = memory.gnu_time()
    if timer is None:
        import pytest
        pytest.skip("no GNU /usr/bin/time to compare with")
    env = memory.child_environment(tmp_path, threads=1)
    # A process that allocates and touches 300 MB: both readings must see it, and agree with each other.
    code = "import numpy; a = numpy.ones(300 * 2**20 // 8); print(a.sum())"
    peaks = {}
    for name, source in (("time", timer), ("vmhwm", None)):
        row = memory.Row("probe", "-", "-", 0, 0)
        assert memory.measure(row, memory.measured_argv(source, tmp_path / f"{name}.peak", code, []),
                              tmp_path / f"{name}.peak", env), row.error
        peaks[name] = row.peak_kib
    assert 300 * 1024 < peaks["vmhwm"] < 400 * 1024
    assert abs(peaks["time"] - peaks["vmhwm"]) < 0.05 * peaks["time"]
