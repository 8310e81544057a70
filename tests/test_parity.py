"""`vitkit classify` against timm's own reference path (resolve_data_config + create_transform + model) on the same weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from tests.conftest import GOOD_SAMPLES, SAMPLE_DATA, parse_jsonl
from vitkit.cli import app


def timm_reference(model_dir: Path, paths: list[Path], k: int) -> list[list[tuple[int, float]]]:
    import timm
    from timm.data import create_transform, resolve_data_config

    model = timm.create_model(f"local-dir:{model_dir}", pretrained=True).eval()
    transform = create_transform(**resolve_data_config(model=model))
    results = []
    with torch.no_grad():
        for path in paths:
            probs = model(transform(Image.open(path).convert("RGB")).unsqueeze(0)).softmax(-1)[0]
            scores, ids = probs.topk(k)
            results.append(list(zip(ids.tolist(), scores.tolist())))
    return results


# Default options too: draft decoding only starts on JPEGs over twice the model's need, which sample_data is not.
@pytest.mark.parametrize("extra", [["--no-draft", "-b", "4"], ["-b", "1", "--workers", "0"], []])
def test_topk_labels_and_probabilities_match_timm(tiny_timm_dir: Path, extra: list[str]) -> None:
    paths = [SAMPLE_DATA / name for name in GOOD_SAMPLES]
    result = CliRunner().invoke(app, ["classify", *map(str, paths), "--model", str(tiny_timm_dir), "-k", "5", *extra])
    assert result.exit_code == 0, result.stderr
    records = parse_jsonl(result.stdout)
    reference = timm_reference(tiny_timm_dir, paths, 5)
    for record, expected in zip(records, reference, strict=True):
        got = [(p["class_id"], p["score"]) for p in record["predictions"]]
        assert [c for c, _ in got] == [c for c, _ in expected]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], atol=1e-4, rtol=0)
    # The check must be able to fail: the tiny model is not uniform, so the top score stands out.
    assert max(p["score"] for p in records[0]["predictions"]) > 2 / 1000


def test_png_and_rgba_inputs_match_timm_on_rgb(tiny_timm_dir: Path, tmp_path: Path) -> None:
    """Lossless inputs in other modes: vitkit's RGB conversion feeds the same pixels timm would see."""
    rgb = Image.open(SAMPLE_DATA / "chelsea.jpg").convert("RGB")
    rgb.save(tmp_path / "cat.png")
    rgb.convert("L").save(tmp_path / "grey.png")
    result = CliRunner().invoke(app, ["classify", str(tmp_path / "cat.png"), str(tmp_path / "grey.png"),
                                      "--model", str(tiny_timm_dir), "-k", "3"])
    records = parse_jsonl(result.stdout)
    reference = timm_reference(tiny_timm_dir, [tmp_path / "cat.png", tmp_path / "grey.png"], 3)
    for record, expected in zip(records, reference, strict=True):
        assert [p["class_id"] for p in record["predictions"]] == [c for c, _ in expected]
        np.testing.assert_allclose([p["score"] for p in record["predictions"]], [s for _, s in expected], atol=1e-4)
