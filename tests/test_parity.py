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


@pytest.mark.parametrize("size", [(1001, 250), (1200, 250), (3001, 250), (250, 1001), (4001, 250)],
                         ids=lambda s: f"{s[0]}x{s[1]}")
def test_the_aspect_guard_leaves_panoramas_bit_identical(size: tuple[int, int]) -> None:
    """Cropping before the resize changes the pixel grid it samples, so ordinary panoramas (past 4:1,
    odd and even widths) must reach timm's eval transform untouched."""
    from timm.data import create_transform

    from vitkit.models.backends.aspect import cap_aspect_ratio

    transform = create_transform(input_size=(3, 224, 224), crop_pct=0.9, interpolation="bicubic")
    image = Image.open(SAMPLE_DATA / "chelsea.jpg").convert("RGB").resize(size, Image.Resampling.BILINEAR)
    guarded = cap_aspect_ratio(transform)
    assert guarded is not transform  # the guard is in place, and lets these through
    assert torch.equal(guarded(image), transform(image))
