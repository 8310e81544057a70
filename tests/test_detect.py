"""`vitkit detect` end to end: parity with the processor's own post-processing, EXIF, outputs, COCO export."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from typer.testing import CliRunner

from tests.conftest import GOOD_SAMPLES, SAMPLE_DATA, parse_jsonl
from vitkit.cli import app

runner = CliRunner()


def detect(*args: str) -> tuple[int, list[dict]]:
    result = runner.invoke(app, ["detect", *args])
    return result.exit_code, parse_jsonl(result.stdout)


def reference(model_dir: Path, path: Path, threshold: float) -> list[tuple[int, float, list[float]]]:
    """transformers alone: the processor, the model, post_process_object_detection at the original size."""
    from transformers import DetrForObjectDetection, DetrImageProcessor

    model = DetrForObjectDetection.from_pretrained(model_dir).eval()
    processor = DetrImageProcessor.from_pretrained(model_dir)
    image = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    with torch.no_grad():
        outputs = model(**processor(images=image, return_tensors="pt"))
    [result] = processor.post_process_object_detection(outputs, threshold=threshold,
                                                       target_sizes=[(image.height, image.width)])
    found = []
    for score, label, box in zip(result["scores"].tolist(), result["labels"].tolist(), result["boxes"].tolist()):
        x0, y0, x1, y1 = box  # vitkit keeps boxes inside the image; compare on the same terms
        found.append((label, score, [min(max(x0, 0), image.width), min(max(y0, 0), image.height),
                                     min(max(x1, 0), image.width), min(max(y1, 0), image.height)]))
    return sorted(found, key=lambda f: -f[1])


def test_boxes_scores_labels_equal_the_processor(tiny_detr_dir: Path) -> None:
    paths = [SAMPLE_DATA / n for n in GOOD_SAMPLES]
    code, records = detect(*map(str, paths), "--model", str(tiny_detr_dir), "--threshold", "0.3", "-b", "1", "--no-draft")
    assert code == 0
    total = 0
    for record, path in zip(records, paths, strict=True):
        expected = reference(tiny_detr_dir, path, 0.3)
        got = record["detections"]
        assert [d["class_id"] for d in got] == [label for label, _, _ in expected]
        np.testing.assert_allclose([d["score"] for d in got], [s for _, s, _ in expected], atol=1e-5)
        if got:
            np.testing.assert_allclose([d["box"] for d in got], [b for _, _, b in expected], atol=1e-3)
        for d in got:
            x0, y0, x1, y1 = d["box"]
            assert 0 <= x0 <= x1 <= record["width"] and 0 <= y0 <= y1 <= record["height"]
            assert d["label"] == ["cat", "dog", "rocket"][d["class_id"]]
        total += len(got)
    assert total > 0  # the check compared real boxes


def test_exif_rotated_jpeg_boxes_align_with_displayed_image(tiny_detr_dir: Path, tmp_path: Path) -> None:
    displayed = Image.open(SAMPLE_DATA / "rocket.jpg").convert("RGB").resize((120, 200))
    stored = displayed.transpose(Image.Transpose.ROTATE_90)  # orientation 6 rotates it back for display
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "rotated.jpg", quality=95, exif=exif.tobytes())
    # The reference is exactly what a viewer shows, saved losslessly without EXIF.
    ImageOps.exif_transpose(Image.open(tmp_path / "rotated.jpg")).save(tmp_path / "upright.png")
    _, [rotated, upright] = detect(str(tmp_path / "rotated.jpg"), str(tmp_path / "upright.png"),
                                   "--model", str(tiny_detr_dir), "--threshold", "0.0", "-b", "1")
    assert (rotated["width"], rotated["height"]) == (120, 200) == (upright["width"], upright["height"])
    assert [d["box"] for d in rotated["detections"]] == [d["box"] for d in upright["detections"]]
    assert all(d["box"][2] <= 120 and d["box"][3] <= 200 for d in rotated["detections"])


def test_annotated_outputs_for_every_success_and_errors_in_place(tiny_detr_dir: Path, photos: Path,
                                                                 tmp_path: Path) -> None:
    (photos / "again").mkdir()
    shutil.copy(photos / "chelsea.jpg", photos / "again" / "chelsea.jpg")  # same name, other folder
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in photos.rglob("*") if p.is_file()}
    out = tmp_path / "annotated"
    code, records = detect(str(photos), "--model", str(tiny_detr_dir), "--out-dir", str(out), "--classes", "rocket",
                           "--threshold", "0.0")
    assert code == 1
    assert [("error" in r) for r in records].count(True) == 3
    outputs = [r["output"] for r in records if "error" not in r]
    assert len(outputs) == len(set(outputs)) == 7
    for record in records:
        if "error" in record:
            assert set(record) == {"path", "error"}
            continue
        assert all(d["label"] == "rocket" for d in record["detections"])
        written = Image.open(record["output"])
        assert written.size == (record["width"], record["height"]) and Path(record["output"]).is_relative_to(out)
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in photos.rglob("*") if p.is_file()}
    assert before == after


def test_coco_export_and_limits(tiny_detr_dir: Path, tmp_path: Path) -> None:
    coco = tmp_path / "det.json"
    code, records = detect(str(SAMPLE_DATA), "--model", str(tiny_detr_dir), "--threshold", "0.0",
                           "--max-detections", "2", "--coco", str(coco))
    assert all(len(r["detections"]) == 2 for r in records if "error" not in r)
    document = json.loads(coco.read_text())
    assert [c["name"] for c in document["categories"]] == ["cat", "dog", "rocket"]
    assert len(document["images"]) == 6 and len(document["annotations"]) == 12
    image_ids = {i["id"] for i in document["images"]}
    for annotation, detection in zip(document["annotations"],
                                     [d for r in records if "error" not in r for d in r["detections"]]):
        assert annotation["image_id"] in image_ids
        x, y, w, h = annotation["bbox"]
        assert np.allclose([x, y, x + w, y + h], detection["box"]) and annotation["score"] == detection["score"]


def test_unknown_class_is_a_usage_error(tiny_detr_dir: Path) -> None:
    result = runner.invoke(app, ["detect", str(SAMPLE_DATA), "--model", str(tiny_detr_dir), "--classes", "unicorn"])
    assert result.exit_code == 2 and "unicorn" in result.stderr


def test_batched_run_keeps_each_image_in_its_slot(tiny_detr_dir: Path) -> None:
    """Padding a batch to its largest image must not move a result to another image's record."""
    _, one = detect(str(SAMPLE_DATA), "--model", str(tiny_detr_dir), "--threshold", "0.0", "-b", "1")
    _, many = detect(str(SAMPLE_DATA), "--model", str(tiny_detr_dir), "--threshold", "0.0", "-b", "4")
    assert [r["path"] for r in one] == [r["path"] for r in many]
    for a, b in zip(one, many):
        if "error" in a:
            assert a == b
        else:
            # Padding is masked out, so a padded batch gives each image (nearly) its own single-image result.
            assert (a["width"], a["height"]) == (b["width"], b["height"])
            np.testing.assert_allclose([d["score"] for d in a["detections"]], [d["score"] for d in b["detections"]], atol=1e-4)
            np.testing.assert_allclose([d["box"] for d in a["detections"]], [d["box"] for d in b["detections"]], atol=0.5)
    distinct = {json.dumps([round(d["score"], 3) for d in r["detections"]]) for r in one if "error" not in r}
    assert len(distinct) > 1  # images get different results, so a swap would be caught


@pytest.fixture
def photos_and_a_long_image(tmp_path: Path) -> tuple[list[Path], Path]:
    """The good photos and a 1 x 70000 image (70 kpx, yet longer than a JPEG can be) among them."""
    folder = tmp_path / "in"
    folder.mkdir()
    paths = [Path(shutil.copy(SAMPLE_DATA / name, folder / name)) for name in GOOD_SAMPLES]
    Image.new("RGB", (1, 70_000), (200, 120, 40)).save(folder / "long.png")
    paths.insert(2, folder / "long.png")
    return paths, tmp_path / "out"


def test_an_image_too_long_for_jpeg_is_annotated_as_png(tiny_detr_dir: Path,
                                                        photos_and_a_long_image: tuple[list[Path], Path]) -> None:
    paths, out = photos_and_a_long_image
    result = runner.invoke(app, ["detect", *map(str, paths), "--model", str(tiny_detr_dir), "--out-dir", str(out),
                                 "--threshold", "0.0", "-b", "2", "--workers", "0"])
    assert result.exit_code == 0, result.stderr
    records = parse_jsonl(result.stdout)
    assert [r["path"] for r in records] == list(map(str, paths))
    for record in records:
        long = record["path"].endswith("long.png")
        assert record["output"].endswith(".detect.png" if long else ".detect.jpg")
        with Image.open(record["output"]) as written:
            assert written.format == ("PNG" if long else "JPEG")
            assert written.size == (record["width"], record["height"])


def test_a_failed_annotated_image_is_that_inputs_error(tiny_detr_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                       photos_and_a_long_image: tuple[list[Path], Path]) -> None:
    """Any failure making one input's own file (here Pillow's JPEG encoder on a 70000-pixel side) is that
    input's error; a full disk or unwritable folder still stops the run (tests/test_robustness.py)."""
    monkeypatch.setattr("vitkit.tasks.detect.JPEG_MAX_SIDE", 10**9)
    paths, out = photos_and_a_long_image
    result = runner.invoke(app, ["detect", *map(str, paths), "--model", str(tiny_detr_dir), "--out-dir", str(out),
                                 "--threshold", "0.0", "-b", "4", "--workers", "0"])
    assert result.exit_code == 1
    records = parse_jsonl(result.stdout)
    assert [r["path"] for r in records] == list(map(str, paths))
    failed = records[2]
    assert set(failed) == {"path", "error"} and failed["error"].startswith("cannot write its output: OSError")
    assert [line for line in result.stderr.splitlines() if line.startswith("error: ")] == [
        f"error: {paths[2]}: {failed['error']}"]
    assert all(Path(r["output"]).is_file() for i, r in enumerate(records) if i != 2)


def test_annotated_images_are_decoded_under_the_runs_max_pixels(tiny_detr_dir: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """An image allowed by a raised --max-pixels must not be refused when decoded again for drawing."""
    import vitkit.inputs.decode

    limits = []
    decode = vitkit.inputs.decode.decode_image

    def spy(path: str, options: vitkit.inputs.decode.DecodeOptions = vitkit.inputs.decode.DecodeOptions()) -> object:
        limits.append(options.max_pixels)
        return decode(path, options)

    monkeypatch.setattr(vitkit.inputs.decode, "decode_image", spy)
    code, records = detect(str(SAMPLE_DATA / "rocket.jpg"), "--model", str(tiny_detr_dir), "--workers", "0",
                           "--out-dir", str(tmp_path), "--max-pixels", "300000000")
    assert code == 0 and Path(records[0]["output"]).is_file()
    assert limits == [300_000_000]


def test_a_10_to_1_image_is_detected_as_the_processor_alone_would(tiny_detr_dir: Path, tmp_path: Path) -> None:
    """Squashing is only for images whose short side `longest_edge` would shrink to a few pixels: at
    shortest 64 / longest 320, a 1000 x 100 image becomes 320 x 32 and reaches the processor as it is."""
    from transformers import DetrImageProcessor

    model_dir = Path(shutil.copytree(tiny_detr_dir, tmp_path / "detr"))
    DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 320}).save_pretrained(model_dir)
    path = tmp_path / "wide.png"
    Image.open(SAMPLE_DATA / "chelsea.jpg").convert("RGB").resize((1000, 100), Image.Resampling.BILINEAR).save(path)
    code, [record] = detect(str(path), "--model", str(model_dir), "--threshold", "0.0", "--no-draft")
    assert code == 0
    expected = reference(model_dir, path, 0.0)
    got = record["detections"]
    assert len(got) == len(expected) > 0
    assert [d["class_id"] for d in got] == [label for label, _, _ in expected]
    np.testing.assert_allclose([d["score"] for d in got], [s for _, s, _ in expected], atol=1e-5)
    np.testing.assert_allclose([d["box"] for d in got], [b for _, _, b in expected], atol=1e-3)


def test_channels_last_weights_give_the_same_detections(tiny_detr_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GPUs get DETR's ResNet in channels_last layout; the layout is device-independent, so its effect
    on the model code is checked here on CPU (no GPU in CI)."""
    from vitkit.models import loading

    paths = [str(SAMPLE_DATA / name) for name in GOOD_SAMPLES]

    def run() -> list[dict]:
        loading.clear_model_cache()  # the cache key does not include the layout
        code, records = detect(*paths, "--model", str(tiny_detr_dir), "--threshold", "0.0", "-b", "3")
        assert code == 0
        return records

    plain = run()
    monkeypatch.setattr(loading, "prefers_channels_last", lambda module, device: True)
    channels_last = run()
    loading.clear_model_cache()
    assert sum(len(r["detections"]) for r in plain) > 0
    for a, b in zip(plain, channels_last, strict=True):
        assert [d["label"] for d in a["detections"]] == [d["label"] for d in b["detections"]]
        np.testing.assert_allclose([d["box"] for d in a["detections"]], [d["box"] for d in b["detections"]], atol=0.05)
        np.testing.assert_allclose([d["score"] for d in a["detections"]], [d["score"] for d in b["detections"]], atol=1e-5)


def test_resume_rebuilds_the_coco_file_from_every_record(tiny_detr_dir: Path, tmp_path: Path) -> None:
    """A resumed run writes the whole-run COCO file from the kept records and the new ones, not the new ones alone."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in GOOD_SAMPLES[:3]:
        shutil.copy(SAMPLE_DATA / name, photos / name)
    out, coco = tmp_path / "det.jsonl", tmp_path / "det.json"
    common = ("--model", str(tiny_detr_dir), "--threshold", "0.0", "--max-detections", "2", "-o", str(out),
              "--resume", "--coco", str(coco))
    first = runner.invoke(app, ["detect", str(photos / GOOD_SAMPLES[0]), *common])
    assert first.exit_code == 0, first.stderr
    assert len(json.loads(coco.read_text())["images"]) == 1
    again = runner.invoke(app, ["detect", str(photos), *common])
    assert again.exit_code == 0 and "resume: 1 inputs already have results" in again.stderr
    document = json.loads(coco.read_text())
    records = parse_jsonl(out.read_text())
    assert sorted(i["file_name"] for i in document["images"]) == sorted(r["path"] for r in records)
    assert len(records) == 3 and len(document["annotations"]) == 6
    as_csv = runner.invoke(app, ["detect", str(photos), *common[:-4], str(tmp_path / "det.csv"), "--resume",
                                 "--coco", str(coco)])
    assert as_csv.exit_code == 2 and "--coco" in as_csv.stderr and "JSON lines" in as_csv.stderr
