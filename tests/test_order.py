"""Failures never shift, swap or lose another image's result, whatever the batch size and worker count."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import SAMPLE_DATA, SAMPLE_ERRORS, parse_jsonl
from vitkit.cli import app


@pytest.fixture(scope="module")
def mixed_inputs(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Good and bad files interleaved, including a whole batch of bad ones."""
    folder = tmp_path_factory.mktemp("mixed")
    good = sorted(SAMPLE_DATA.glob("*.jpg"))
    bad = sorted(SAMPLE_ERRORS.glob("*.jpg"))
    order = [good[0], bad[0], good[1], good[2], bad[1], bad[2], bad[0], good[3], good[4], bad[1], good[5]]
    paths = []
    for i, source in enumerate(order):
        target = folder / f"{i:02d}_{source.name}"
        shutil.copy(source, target)
        paths.append(str(target))
    return paths


def classify(paths: list[str], model: Path, *extra: str, expect_exit: int | None = 1) -> list[dict]:
    result = CliRunner().invoke(app, ["classify", *paths, "--model", str(model), "-k", "3", *extra])
    if expect_exit is not None:
        assert result.exit_code == expect_exit
    return parse_jsonl(result.stdout)


@pytest.fixture(scope="module")
def one_at_a_time(mixed_inputs: list[str], tiny_timm_dir: Path) -> dict[str, dict]:
    """Each file classified in a run of its own: nothing to shift or swap."""
    return {p: classify([p], tiny_timm_dir, expect_exit=None)[0] for p in mixed_inputs}


@pytest.mark.parametrize("batch_size,workers", [(1, 0), (2, 0), (3, 2), (4, 1), (16, 2)])
def test_each_record_in_its_own_slot(mixed_inputs: list[str], tiny_timm_dir: Path, one_at_a_time: dict,
                                     batch_size: int, workers: int) -> None:
    records = classify(mixed_inputs, tiny_timm_dir, "-b", str(batch_size), "--workers", str(workers))
    assert [r["path"] for r in records] == mixed_inputs
    for record in records:
        expected = one_at_a_time[record["path"]]
        if "error" in expected:
            assert record == expected
        else:
            assert [p["class_id"] for p in record["predictions"]] == [p["class_id"] for p in expected["predictions"]]
            for got, want in zip(record["predictions"], expected["predictions"]):
                assert abs(got["score"] - want["score"]) < 1e-5
    assert len({str(r.get("predictions")) for r in records if "predictions" in r}) == 6  # six distinct photos


def test_a_whole_batch_of_bad_files(tiny_timm_dir: Path) -> None:
    bad = [str(p) for p in sorted(SAMPLE_ERRORS.glob("*.jpg"))]
    records = classify(bad + [str(SAMPLE_DATA / "rocket.jpg")], tiny_timm_dir, "-b", "3")
    assert [("error" in r) for r in records] == [True, True, True, False]
