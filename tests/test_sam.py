"""Segment Anything: `segment --mode prompt` and `detect --masks` against transformers' own SamModel
forward + SamProcessor.post_process_masks, on a tiny random SAM saved with save_pretrained."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from typer.testing import CliRunner

import vitkit
from tests.conftest import BROKEN_SAMPLES, SAMPLE_DATA, SAMPLE_ERRORS, parse_jsonl, run_vitkit
from vitkit.cli import app
from vitkit.errors import UsageError
from vitkit.outputs.rle import decode_mask, encode_mask, mask_area

runner = CliRunner()
POINTS = ("100,120", "200,50,0")  # a foreground and a background point, inside every test image
BOX = "10,20,110,190"


@pytest.fixture(scope="module")
def tiny_sam_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SAM with a 2-block ViT on 64 px inputs (8 x 8 embedding) and its processor at the same sizes."""
    from transformers import (SamConfig, SamImageProcessor, SamMaskDecoderConfig, SamModel, SamProcessor,
                              SamPromptEncoderConfig, SamVisionConfig)

    torch.manual_seed(0)
    vision = SamVisionConfig(hidden_size=32, output_channels=32, num_hidden_layers=2, num_attention_heads=2,
                             image_size=64, patch_size=8, window_size=4, global_attn_indexes=[1], num_pos_feats=16,
                             mlp_dim=64)
    prompt = SamPromptEncoderConfig(hidden_size=32, image_size=64, patch_size=8)
    decoder = SamMaskDecoderConfig(hidden_size=32, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2,
                                   iou_head_hidden_dim=32)
    model = SamModel(SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder))
    with torch.no_grad():  # random IoU heads predict ~0 for every output: spread them so the choice means something
        model.mask_decoder.iou_prediction_head.proj_out.weight.normal_(0, 1.0)
    path = tmp_path_factory.mktemp("models") / "tiny-sam"
    model.save_pretrained(path)
    SamProcessor(SamImageProcessor(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64},
                                   mask_size={"longest_edge": 16}, mask_pad_size={"height": 16, "width": 16})
                 ).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A non-square photo (451 x 300), a square one, and a JPEG stored on its side with EXIF orientation 6."""
    folder = tmp_path_factory.mktemp("sam_images")
    shutil.copy(SAMPLE_DATA / "chelsea.jpg", folder / "chelsea.jpg")
    shutil.copy(SAMPLE_DATA / "camera.jpg", folder / "camera.jpg")
    displayed = Image.open(SAMPLE_DATA / "rocket.jpg").convert("RGB").resize((240, 400))
    exif = Image.Exif()
    exif[0x0112] = 6
    displayed.transpose(Image.Transpose.ROTATE_90).save(folder / "rotated.jpg", quality=95, exif=exif.tobytes())
    return folder


def dicts(records) -> list[dict]:
    return [record.to_dict() for record in records]


def upright(path: Path) -> Image.Image:
    return ImageOps.exif_transpose(Image.open(path)).convert("RGB")


def sam_reference(model_dir: Path, path: Path, points: list[list[float]] | None = None,
                  labels: list[int] | None = None, boxes: list[list[float]] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers alone on the full upright image: (Q, K, H, W) bool masks and (Q, K) predicted IoUs,
    points making one prompt and each box its own."""
    from transformers import SamModel, SamProcessor

    model, processor = SamModel.from_pretrained(model_dir).eval(), SamProcessor.from_pretrained(model_dir)
    kwargs = {}
    if points:
        kwargs.update(input_points=[[points]], input_labels=[[labels]])
    if boxes:
        kwargs.update(input_boxes=[boxes])
    inputs = processor(images=upright(path), return_tensors="pt", **kwargs)
    with torch.no_grad():
        outputs = model(**inputs)
    [masks] = processor.post_process_masks(outputs.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"])
    return masks, outputs.iou_scores[0]


def parsed(points: tuple[str, ...]) -> tuple[list[list[float]], list[int]]:
    values = [[float(v) for v in p.split(",")] for p in points]
    return [v[:2] for v in values], [int(v[2]) if len(v) > 2 else 1 for v in values]


def read_mask(path: str) -> np.ndarray:
    return np.array(Image.open(path)).astype(np.int64)


@pytest.mark.parametrize("prompt", ["points", "box", "points+box"])
@pytest.mark.parametrize("name", ["chelsea.jpg", "rotated.jpg"])
def test_prompt_masks_equal_transformers(prompt: str, name: str, tiny_sam_dir: Path, images: Path,
                                         tmp_path: Path) -> None:
    points, box = (POINTS if "points" in prompt else ()), (BOX if "box" in prompt else None)
    [record] = dicts(vitkit.segment(str(images / name), mode="prompt", point=points, box=box, model=str(tiny_sam_dir),
                              out_dir=str(tmp_path), draft=False))
    coords, labels = parsed(points)
    boxes = [[float(v) for v in BOX.split(",")]] if box else None
    masks, iou = sam_reference(tiny_sam_dir, images / name, coords or None, labels or None, boxes)
    best = int(iou[0].argmax())
    expected = masks[0, best].numpy()
    assert (record["width"], record["height"]) == upright(images / name).size
    assert np.array_equal(read_mask(record["mask"]), expected.astype(np.int64))
    assert 0 < expected.sum() < expected.size  # a real mask, not all or nothing
    [segment] = record["segments"]
    assert segment["id"] == 1 and segment["label"] == f"mask {best}"
    assert segment["score"] == float(iou[0, best]) and segment["area"] == int(expected.sum())


def test_all_masks_keeps_every_multimask_output(tiny_sam_dir: Path, images: Path, tmp_path: Path) -> None:
    [record] = dicts(vitkit.segment(str(images / "chelsea.jpg"), mode="prompt", point=POINTS[:1], all_masks=True,
                              model=str(tiny_sam_dir), out_dir=str(tmp_path), draft=False))
    masks, iou = sam_reference(tiny_sam_dir, images / "chelsea.jpg", [[100.0, 120.0]], [1])
    label_map = read_mask(record["mask"])
    by_id = {s["id"]: s for s in record["segments"]}
    for k in range(3):
        if k + 1 in by_id:
            assert by_id[k + 1]["label"] == f"mask {k}" and by_id[k + 1]["score"] == float(iou[0, k])
        # every pixel painted k + 1 lies in SAM's mask k; every mask pixel is painted by some mask
        assert masks[0, k].numpy()[label_map == k + 1].all()
    assert np.array_equal(label_map > 0, masks[0].any(0).numpy())


def test_overlay_is_the_displayed_size_and_leaves_the_rest_alone(tiny_sam_dir: Path, images: Path,
                                                                  tmp_path: Path) -> None:
    [record] = dicts(vitkit.segment(str(images / "rotated.jpg"), mode="prompt", point=POINTS, model=str(tiny_sam_dir),
                              out_dir=str(tmp_path), draft=False, alpha=0.6))
    original = np.array(upright(images / "rotated.jpg"))
    overlay = np.array(Image.open(record["overlay"]))
    mask = read_mask(record["mask"]) > 0
    assert overlay.shape == original.shape == (400, 240, 3)
    assert np.array_equal(overlay[~mask], original[~mask])
    assert mask.any() and not np.array_equal(overlay[mask], original[mask])
    shutil.copy(record["overlay"], tmp_path / "kept.png")


def test_embedding_once_per_image(tiny_sam_dir: Path, images: Path) -> None:
    model = vitkit.load_model(str(tiny_sam_dir), task="segment")
    seen: list[int] = []
    model.module.vision_encoder.register_forward_hook(lambda module, args, output: seen.append(args[0].shape[0]))
    paths = [str(images / n) for n in ("chelsea.jpg", "camera.jpg", "rotated.jpg")]
    records = dicts(vitkit.segment(paths, mode="prompt", point=POINTS, box=BOX, model=model, batch_size=2))
    assert [r["path"] for r in records] == paths and sum(seen) == 3


def test_cli_prompt_outside_an_image_and_broken_files_keep_their_slots(tiny_sam_dir: Path, images: Path,
                                                                        tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(images / "chelsea.jpg", folder / "a.jpg")  # 451 x 300: the point's y of 400 is outside
    shutil.copy(images / "camera.jpg", folder / "b.jpg")  # 512 x 512
    shutil.copy(SAMPLE_ERRORS / BROKEN_SAMPLES[0], folder / "c.jpg")
    result = run_vitkit("segment", str(folder), "--mode", "prompt", "--point", "300,400", "--model",
                        str(tiny_sam_dir), "--out-dir", str(tmp_path / "out"), "-f", "jsonl")
    a, b, c = parse_jsonl(result.stdout)
    assert result.returncode == 1  # some inputs failed
    assert a["path"].endswith("a.jpg") and "300,400 lies outside the 451x300 image" in a["error"]
    assert b["path"].endswith("b.jpg") and "error" not in b and Path(b["overlay"]).is_file()
    assert c["path"].endswith("c.jpg") and c["error"]
    assert "a.jpg" in result.stderr and "outside" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--point", "1,2"], "only apply to --mode prompt"),
    (["--mode", "prompt"], "needs a prompt"),
    (["--mode", "prompt", "--point", "1,2,7"], "label must be 1"),
    (["--mode", "prompt", "--point", "a,b"], "is not X,Y"),
    (["--mode", "prompt", "--box", "5,5,5,9"], "is empty"),
])
def test_bad_prompts_are_usage_errors(args: list[str], message: str, tiny_sam_dir: Path) -> None:
    result = runner.invoke(app, ["segment", str(SAMPLE_DATA / "camera.jpg"), "--model", str(tiny_sam_dir), *args])
    assert result.exit_code == 2 and message in result.stderr


def test_a_sam_model_refuses_other_modes_and_others_refuse_prompt_mode(tiny_sam_dir: Path, tiny_detr_dir: Path) -> None:
    result = runner.invoke(app, ["segment", str(SAMPLE_DATA / "camera.jpg"), "--model", str(tiny_sam_dir)])
    assert result.exit_code == 2 and "--mode prompt" in result.stderr
    result = runner.invoke(app, ["segment", str(SAMPLE_DATA / "camera.jpg"), "--model", str(tiny_detr_dir),
                                 "--mode", "prompt", "--point", "1,1"])
    assert result.exit_code == 2 and "cannot segment" in result.stderr


def test_catalogue_and_folder_recognition(tiny_sam_dir: Path) -> None:
    from vitkit.models.registry import CATALOGUE, DEFAULT_SEGMENT_MODELS, resolve

    assert DEFAULT_SEGMENT_MODELS["prompt"] == "sam-b"
    assert CATALOGUE["sam-b"].source == "facebook/sam-vit-base" and CATALOGUE["sam-b"].params_millions == 93.7
    assert "segment" in resolve(str(tiny_sam_dir), "segment").capabilities


# --- detect --masks ------------------------------------------------------------------------------

def test_detect_masks_equal_sam_on_each_box(tiny_sam_dir: Path, tiny_detr_dir: Path, images: Path,
                                            tmp_path: Path) -> None:
    names = ["chelsea.jpg", "rotated.jpg"]
    result = runner.invoke(app, ["detect", *[str(images / n) for n in names], "--model", str(tiny_detr_dir),
                                 "--threshold", "0.3", "--masks", "--mask-model", str(tiny_sam_dir), "--no-draft",
                                 "--coco", str(tmp_path / "coco.json"), "--out-dir", str(tmp_path / "out"),
                                 "-f", "jsonl"])
    assert result.exit_code == 0, result.stderr
    records = parse_jsonl(result.stdout)
    assert sum(len(r["detections"]) for r in records) >= 2
    for name, record in zip(names, records):
        boxes = [d["box"] for d in record["detections"]]
        masks, iou = sam_reference(tiny_sam_dir, images / name, boxes=boxes)
        for detection, box_masks, box_iou in zip(record["detections"], masks, iou):
            mask = decode_mask(detection["mask"])
            assert mask.shape == (record["height"], record["width"])
            assert np.array_equal(mask, box_masks[int(box_iou.argmax())].numpy())
        [annotated_path] = (tmp_path / "out").rglob(f"{name}.detect.jpg")
        annotated = Image.open(annotated_path)
        assert annotated.size == (record["width"], record["height"])
        # the masks are tinted: inside them the annotated image is far from the original (beyond JPEG noise)
        covered = np.any([decode_mask(d["mask"]) for d in record["detections"]], axis=0)
        difference = np.abs(np.asarray(annotated, dtype=np.int16) - np.asarray(upright(images / name), dtype=np.int16))
        assert covered.any() and difference[covered].mean() > 20
    coco = json.loads((tmp_path / "coco.json").read_text())
    detections = [d for r in records for d in r["detections"]]
    assert [a["segmentation"] for a in coco["annotations"]] == [d["mask"] for d in detections]
    assert [a["area"] for a in coco["annotations"]] == [int(decode_mask(d["mask"]).sum()) for d in detections]


def test_detect_masks_through_the_library_and_without_detections(tiny_sam_dir: Path, tiny_detr_dir: Path,
                                                                  images: Path) -> None:
    paths = [str(images / "camera.jpg"), str(SAMPLE_ERRORS / BROKEN_SAMPLES[0])]
    good, broken = dicts(vitkit.detect(paths, model=str(tiny_detr_dir), threshold=0.3, masks=True,
                                       mask_model=str(tiny_sam_dir)))
    assert good["detections"] and all(decode_mask(d["mask"]).shape == (512, 512) for d in good["detections"])
    assert "error" in broken
    [nothing] = dicts(vitkit.detect(paths[:1], model=str(tiny_detr_dir), threshold=1.0, masks=True,
                                    mask_model=str(tiny_sam_dir)))
    assert nothing["detections"] == []
    with pytest.raises(UsageError, match="only applies with --masks"):
        list(vitkit.detect(paths[:1], model=str(tiny_detr_dir), mask_model=str(tiny_sam_dir)))


def test_detect_masks_on_the_contact_sheet_and_a_too_thin_image(tiny_sam_dir: Path, tiny_detr_dir: Path,
                                                                  images: Path, tmp_path: Path) -> None:
    """Masks are at the image's full size: the sheet's thumbnails shrink them. An image SAM's processor
    cannot take (under one pixel wide once resized) is that input's clear error, the others carry on."""
    thin = tmp_path / "thin.png"
    Image.new("RGB", (3000, 1), (90, 120, 30)).save(thin)
    sheet = tmp_path / "sheet.html"
    result = runner.invoke(app, ["detect", str(images / "chelsea.jpg"), str(thin), "--model", str(tiny_detr_dir),
                                 "--threshold", "0.3", "--masks", "--mask-model", str(tiny_sam_dir),
                                 "--html", str(sheet), "-f", "jsonl"])
    good, too_thin = parse_jsonl(result.stdout)
    assert result.exit_code == 1 and good["detections"] and all("mask" in d for d in good["detections"])
    assert too_thin["error"].startswith("a 3000x1 image is too thin for Segment Anything")
    page = sheet.read_text()
    assert page.count("data:image/jpeg;base64") == 1 and "no preview:" not in page


# --- COCO RLE ------------------------------------------------------------------------------------

def test_rle_is_cocos_compressed_form() -> None:
    mask = np.zeros((6, 5), dtype=bool)
    mask[1:4, 2:4] = True
    mask[5, 0] = True
    # pycocotools.mask.encode(np.asfortranarray(mask.astype(np.uint8))) gives these bytes
    assert encode_mask(mask) == {"size": [6, 5], "counts": "5172L05"}
    rng = np.random.default_rng(0)
    for shape, share in (((40, 33), 0.3), ((7, 9), 1.0), ((7, 9), 0.0), ((300, 451), 0.97)):
        mask = rng.random(shape) < share
        rle = encode_mask(mask)
        assert np.array_equal(decode_mask(rle), mask) and mask_area(rle) == mask.sum()
