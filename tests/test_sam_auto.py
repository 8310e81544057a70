"""`vitkit segment --mode auto`: Segment Anything's automatic masks equal transformers' own
`mask-generation` pipeline's, painted as documented; files, EXIF, failures, CLI and library."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from typer.testing import CliRunner

import vitkit
from tests.conftest import BROKEN_SAMPLES, GOOD_SAMPLES, SAMPLE_DATA, parse_jsonl, run_vitkit
from vitkit.cli import app

runner = CliRunner()

GRID = 4  # points per side: 16 prompts, three masks each


@pytest.fixture(scope="module")
def tiny_sam_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import (SamConfig, SamImageProcessor, SamMaskDecoderConfig, SamModel, SamProcessor,
                              SamPromptEncoderConfig, SamVisionConfig)

    torch.manual_seed(0)
    vision = SamVisionConfig(hidden_size=16, output_channels=16, num_hidden_layers=1, num_attention_heads=1,
                             image_size=64, patch_size=8, window_size=4, global_attn_indexes=[0], num_pos_feats=8,
                             mlp_dim=32, initializer_range=0.5)
    prompt = SamPromptEncoderConfig(hidden_size=16, image_size=64, patch_size=8, mask_input_channels=4)
    decoder = SamMaskDecoderConfig(hidden_size=16, mlp_dim=32, num_hidden_layers=1, num_attention_heads=2,
                                   iou_head_hidden_dim=16)
    model = SamModel(SamConfig(vision_config=vision.to_dict(), prompt_encoder_config=prompt.to_dict(),
                               mask_decoder_config=decoder.to_dict()))
    with torch.no_grad():
        # Random weights give near-equal IoU predictions and masks blind to the point; wider ones differ.
        model.mask_decoder.iou_prediction_head.proj_out.weight.normal_(0, 1.0)
        model.shared_image_embedding.positional_embedding.normal_(0, 4.0)
        # Mask logits of a few units, as trained SAM's, not 1e-3: the stability score's cut-offs are +-1.
        model.mask_decoder.upscale_conv2.weight.normal_(0, 1.0)
        for weight in model.mask_decoder.output_hypernetworks_mlps.parameters():
            weight.normal_(0, 1.0)
    path = tmp_path_factory.mktemp("models") / "tiny-sam"
    model.save_pretrained(path)
    SamProcessor(SamImageProcessor(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64})).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def generator(tiny_sam_dir: Path):
    from transformers import pipeline

    return pipeline("mask-generation", model=str(tiny_sam_dir), device="cpu")


def expected_label_map(masks: list[torch.Tensor], min_area: int = 0) -> tuple[np.ndarray, list[int]]:
    """The README's painting rule on the pipeline's own masks (best score first): larger masks painted
    first, ids 1.. in score order over the masks left visible. Returns the map and the visible ranks."""
    height, width = masks[0].shape if masks else (1, 1)
    canvas = np.zeros((height, width), dtype=np.int64)
    areas = [int(m.sum()) for m in masks]
    for rank in sorted(range(len(masks)), key=lambda r: (-areas[r], r)):
        canvas[masks[rank].numpy()] = rank + 1
    visible = [rank for rank in range(len(masks)) if (canvas == rank + 1).sum() >= max(1, min_area)]
    label_map = np.zeros_like(canvas)
    for new_id, rank in enumerate(visible, 1):
        label_map[canvas == rank + 1] = new_id
    return label_map, visible


def exif_rotated(tmp_path: Path) -> tuple[Path, Image.Image]:
    displayed = Image.open(SAMPLE_DATA / "chelsea.jpg").convert("RGB").resize((150, 100))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6 turns the stored (rotated) pixels back for display
    path = tmp_path / "rotated.jpg"
    displayed.transpose(Image.Transpose.ROTATE_90).save(path, quality=95, exif=exif.tobytes())
    return path, ImageOps.exif_transpose(Image.open(path)).convert("RGB")


def non_square(tmp_path: Path) -> tuple[Path, Image.Image]:
    path = tmp_path / "wide.png"
    Image.open(SAMPLE_DATA / "rocket.jpg").convert("RGB").resize((97, 211)).save(path)
    return path, Image.open(path).convert("RGB")


# (pred IoU, stability, box NMS): everything (no filter, no suppression), filters at low resolution
# and full size with SAM's NMS, and SAM's NMS alone.
SETTINGS = [(0.0, 0.0, 1.0), (0.003, 0.8, 0.7), (0.0, 0.0, 0.7)]


@pytest.mark.parametrize("image", [non_square, exif_rotated])
@pytest.mark.parametrize("settings", SETTINGS)
def test_masks_equal_the_mask_generation_pipeline(tiny_sam_dir: Path, generator, tmp_path: Path, image,
                                                  settings: tuple[float, float, float]) -> None:
    pred_iou, stability, nms = settings
    path, upright = image(tmp_path)
    reference = generator(upright, points_per_batch=64, points_per_crop=GRID, pred_iou_thresh=pred_iou,
                          stability_score_thresh=stability, crops_nms_thresh=nms)
    candidates = 3 * GRID * GRID
    if settings == SETTINGS[0]:
        assert len(reference["masks"]) == candidates
    else:  # filters that drop nothing, or everything, would not be tested
        assert 0 < len(reference["masks"]) < candidates
    [record] = vitkit.segment(path, mode="auto", model=str(tiny_sam_dir), out_dir=str(tmp_path / "out"),
                              points_per_side=GRID, points_per_batch=24, pred_iou_threshold=pred_iou,
                              stability_score_threshold=stability, box_nms_threshold=nms)
    label_map, visible = expected_label_map(reference["masks"])
    assert (record.width, record.height) == upright.size
    np.testing.assert_array_equal(np.array(Image.open(record.mask)).astype(np.int64), label_map)
    assert [s["id"] for s in record.segments] == list(range(1, len(visible) + 1))
    # Point batches of 24 against the pipeline's 64: the decoder's matmuls may round differently.
    assert [s["score"] for s in record.segments] == pytest.approx(
        [float(reference["scores"][r]) for r in visible], abs=1e-6)
    assert all(s["label"] is None for s in record.segments)
    for segment in record.segments:
        rows, cols = np.nonzero(label_map == segment["id"])
        assert segment["area"] == rows.size
        assert segment["box"] == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]


def test_min_area_drops_small_visible_segments_and_renumbers(tiny_sam_dir: Path, generator, tmp_path: Path) -> None:
    path, upright = non_square(tmp_path)
    reference = generator(upright, points_per_crop=GRID, pred_iou_thresh=0, stability_score_thresh=0,
                          crops_nms_thresh=1.0)
    all_visible = expected_label_map(reference["masks"])[1]
    label_map, visible = expected_label_map(reference["masks"], min_area=500)
    assert 0 < len(visible) < len(all_visible)
    [record] = vitkit.segment(path, mode="auto", model=str(tiny_sam_dir), out_dir=str(tmp_path / "out"),
                              min_area=500, points_per_side=GRID, pred_iou_threshold=0, stability_score_threshold=0,
                              box_nms_threshold=1.0)
    np.testing.assert_array_equal(np.array(Image.open(record.mask)).astype(np.int64), label_map)


def test_cli_on_sample_data_keeps_failures_in_their_slots(tiny_sam_dir: Path, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "masks"
    result = run_vitkit("segment", str(photos), "--mode", "auto", "--model", str(tiny_sam_dir), "--points-per-side",
                        "2", "--pred-iou-threshold", "0", "--stability-score-threshold", "0", "--out-dir", str(out),
                        "--format", "jsonl")
    assert result.returncode == 1, result.stderr  # the broken samples fail, alone
    records = parse_jsonl(result.stdout)
    names = [Path(r["path"]).relative_to(photos).as_posix() for r in records]
    assert names == sorted([f"broken/{n}" for n in BROKEN_SAMPLES] + GOOD_SAMPLES)
    for record in records:
        if Path(record["path"]).parent.name == "broken":
            assert set(record) == {"path", "error"}
            continue
        assert record["segments"], record["path"]
        original = ImageOps.exif_transpose(Image.open(record["path"])).convert("RGB")
        overlay, label_map = Image.open(record["overlay"]), np.array(Image.open(record["mask"]))
        assert overlay.size == original.size == (record["width"], record["height"])
        assert label_map.shape == (original.height, original.width)
        outside = label_map == 0
        assert outside.any() and (~outside).any()
        np.testing.assert_array_equal(np.array(overlay)[outside], np.array(original)[outside])
        assert not np.array_equal(np.array(overlay)[~outside], np.array(original)[~outside])


def test_library_and_cli_give_the_same_records(tiny_sam_dir: Path) -> None:
    photo = str(SAMPLE_DATA / "coffee.jpg")
    options = dict(points_per_side=3, pred_iou_threshold=0.0, stability_score_threshold=0.0)
    [from_library] = vitkit.segment(photo, mode="auto", model=str(tiny_sam_dir), **options)
    result = runner.invoke(app, ["segment", photo, "--mode", "auto", "--model", str(tiny_sam_dir),
                                 "--points-per-side", "3", "--pred-iou-threshold", "0",
                                 "--stability-score-threshold", "0", "--format", "jsonl"])
    assert result.exit_code == 0, result.stderr
    [from_cli] = parse_jsonl(result.stdout)
    assert from_cli["segments"] == from_library.segments and from_library.segments
    assert from_cli["mask"] is None and from_cli["overlay"] is None


@pytest.mark.parametrize("args, message", [
    (["--mode", "auto", "--crop-layers", "1"], "--crop-layers"),
    (["--points-per-side", "8"], "only applies to --mode auto"),
    (["--mode", "auto", "--box-nms-threshold", "1.5"], "--box-nms-threshold"),
    ([], "--mode auto"),  # a Segment Anything model in the default (semantic) mode names the mode it does
])
def test_usage_errors(tiny_sam_dir: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["segment", str(SAMPLE_DATA / "coffee.jpg"), "--model", str(tiny_sam_dir), *args])
    assert result.exit_code == 2 and message in result.stderr, result.stderr


def test_the_image_embedding_is_computed_once_per_image(tiny_sam_dir: Path) -> None:
    loaded = vitkit.load_model(str(tiny_sam_dir), task="segment")
    calls: list[int] = []
    hook = loaded.module.vision_encoder.register_forward_hook(lambda module, args, output: calls.append(1))
    try:
        photos = [str(SAMPLE_DATA / "coffee.jpg"), str(SAMPLE_DATA / "camera.jpg")]
        records = list(vitkit.segment(photos, mode="auto", model=loaded, points_per_side=3, points_per_batch=2,
                                      batch_size=2))
    finally:
        hook.remove()
    assert len(records) == 2 and all(r.segments is not None for r in records)
    assert len(calls) == 1  # one batch of two images; five point batches each reuse its embeddings
