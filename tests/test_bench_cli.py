"""`vitkit bench` end to end through the CLI on a tiny local model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vitkit.runtime.bench import COLUMNS, parse_size
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
