"""`vitkit bench` end to end through the CLI on a tiny local model."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vitkit.runtime.bench import COLUMNS, Rates, parse_size
from vitkit.cli import app
from vitkit.errors import UsageError

runner = CliRunner()


def bench_json(*args: str) -> list[dict]:
    result = runner.invoke(app, ["bench", "--images", "8", "--batch-size", "4", "--size", "320x240", "-f", "json",
                                 "--quiet", *args])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("fixture, task", [("tiny_timm_dir", "classify"), ("tiny_open_clip_dir", "embed")])
def test_one_row_of_positive_finite_throughputs(fixture: str, task: str, request: pytest.FixtureRequest) -> None:
    model_dir: Path = request.getfixturevalue(fixture)
    rows = bench_json("--model", str(model_dir), "--precision", "fp32", "--workers", "0")
    assert len(rows) == 1
    row = rows[0]
    assert tuple(row) == COLUMNS
    assert (row["task"], row["device"], row["precision"]) == (task, "cpu", "fp32")
    assert (row["batch_size"], row["images"], row["image_size"]) == (4, 8, "320x240")
    for key in ("model_only_img_s", "end_to_end_img_s", "end_to_end_vs_model_only"):
        assert isinstance(row[key], float) and math.isfinite(row[key]) and row[key] > 0


def test_csv_has_the_same_columns(tiny_timm_dir: Path) -> None:
    result = runner.invoke(app, ["bench", "--model", str(tiny_timm_dir), "--images", "2", "--batch-size", "2",
                                 "--size", "64x48", "--workers", "0", "-f", "csv", "--quiet"])
    assert result.exit_code == 0, result.stderr
    header, row, *rest = result.stdout.splitlines()
    assert header.split(",") == list(COLUMNS) and not rest
    assert row.split(",")[1:4] == ["classify", "cpu", "fp32"]


def test_model_not_in_cache_exits_3_with_a_clear_message() -> None:
    result = runner.invoke(app, ["bench", "--model", "vit-b16", "--images", "2"])
    assert result.exit_code == 3
    assert "not in the local cache" in result.stderr and "vitkit models pull vit-b16" in result.stderr
    assert result.stdout == ""


def test_bad_size_is_a_usage_error() -> None:
    assert parse_size("1920x1080") == (1920, 1080)
    with pytest.raises(UsageError):
        parse_size("1920")
    result = runner.invoke(app, ["bench", "--size", "big"])
    assert result.exit_code == 2 and "WIDTHxHEIGHT" in result.stderr


def test_median_and_spread_of_repeated_passes() -> None:
    """The three runs from the issue: one pass would have reported any of them; the median is the middle one."""
    rates = Rates.of([26.0, 11.8, 57.9])
    assert (rates.median, rates.low, rates.high) == (26.0, 11.8, 57.9)
    assert Rates.of([4.0, 1.0, 3.0, 2.0]).median == 2.5
    with pytest.raises(ValueError):
        Rates.of([])


def test_repeats_give_a_median_within_its_reported_spread(tiny_timm_dir: Path) -> None:
    [row] = bench_json("--model", str(tiny_timm_dir), "--precision", "fp32", "--workers", "0", "--repeats", "5")
    assert row["repeats"] == 5
    for kind in ("model_only", "end_to_end"):
        assert 0 < row[f"{kind}_min"] <= row[f"{kind}_img_s"] <= row[f"{kind}_max"], row
    assert bench_json("--model", str(tiny_timm_dir), "--workers", "0")[0]["repeats"] == 3  # the default


def test_timing_functions_return_one_rate_per_pass(tiny_timm_dir: Path, tmp_path: Path) -> None:
    from vitkit.inputs.discover import InputItem
    from vitkit.models.loading import load_model
    from vitkit.models.registry import CLASSIFY, resolve
    from vitkit.runtime.bench import preprocess_one, time_end_to_end, time_model_only, write_synthetic_jpegs
    from vitkit.runtime.runner import RunOptions
    from vitkit.tasks.classify import ClassifyTask

    task = ClassifyTask(load_model(resolve(str(tiny_timm_dir), CLASSIFY), CLASSIFY, "cpu", "fp32"))
    paths = write_synthetic_jpegs(str(tmp_path), 4, (64, 48))
    model_only = time_model_only(task, preprocess_one(task, paths[0], True), 2, 4, repeats=4)
    end_to_end = time_end_to_end(task, [InputItem(p) for p in paths], RunOptions(batch_size=2, workers=0), repeats=3)
    assert len(model_only) == 4 and len(end_to_end) == 3
    assert all(math.isfinite(r) and r > 0 for r in model_only + end_to_end)


def test_terminal_summary_shows_medians_and_spread(tiny_timm_dir: Path) -> None:
    result = runner.invoke(app, ["bench", "--model", str(tiny_timm_dir), "--images", "2", "--batch-size", "2",
                                 "--size", "64x48", "--workers", "0", "-f", "table", "--quiet"])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"model only +\d+\.\d img/s  \(min-max \d+\.\d-\d+\.\d\)", lines[2])
    assert re.fullmatch(r"end to end +\d+\.\d img/s  \(min-max \d+\.\d-\d+\.\d\), \d\.\d\d of model only", lines[3])
    assert "median of 3 passes after a warm-up" in lines[1]
    assert all(len(line) <= 80 for line in lines[1:])  # the first names the model, as long as its path


def test_zero_repeats_is_a_usage_error(tiny_timm_dir: Path) -> None:
    result = runner.invoke(app, ["bench", "--model", str(tiny_timm_dir), "--repeats", "0"])
    assert result.exit_code == 2 and "--repeats" in result.stderr
