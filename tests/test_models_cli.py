"""`vitkit models list | show | pull` through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from tests.conftest import parse_jsonl
from vitkit.cli import app

runner = CliRunner()


def test_list_shows_catalogue_with_defaults() -> None:
    result = runner.invoke(app, ["models", "list", "--format", "jsonl"])
    assert result.exit_code == 0
    rows = {r["model"]: r for r in parse_jsonl(result.stdout)}
    assert {"vit-b16", "clip-b32", "detr-r50", "segformer-b0", "mae-base", "coca-b32"} <= set(rows)
    assert "default for classify" in rows["vit-b16"]["description"]
    assert rows["vit-b16"]["cached"] == "no" and rows["clip-b32"]["hub_repo"].startswith("laion/")


def test_list_filters_by_task() -> None:
    result = runner.invoke(app, ["models", "list", "--task", "detect", "--format", "json"])
    assert [r["model"] for r in json.loads(result.stdout)] == ["detr-r50"]


def test_show_local_folder(tiny_timm_dir: Path) -> None:
    result = runner.invoke(app, ["models", "show", str(tiny_timm_dir), "--format", "json"])
    [row] = json.loads(result.stdout)
    assert row["backend"] == "timm" and row["cached"] == "local" and row["tasks"] == "classify"


def test_show_unknown_model_exits_3() -> None:
    result = runner.invoke(app, ["models", "show", "vit-b61"])
    assert result.exit_code == 3 and "did you mean" in result.stderr


def test_pull_offline_fails_clearly_but_local_folders_are_ready(tiny_timm_dir: Path) -> None:
    result = runner.invoke(app, ["models", "pull", "vit-s16", str(tiny_timm_dir)])
    assert result.exit_code == 3
    assert "cannot download vit-s16" in result.stderr
    assert f"ready: {tiny_timm_dir}" in result.stderr
