"""Full-resolution segmentation in bounded memory: exact parity of the channel-at-a-time upsampling with
the processors' own post-processing, and the peak of a 12 MP run in a child process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from tests.conftest import SAMPLE_DATA
from tests.test_segment import (PROMPTS, panoptic_reference, read_mask, segment, semantic_reference,  # noqa: F401
                                tiny_clipseg_dir, tiny_detr_panoptic_dir, tiny_mask2former_dir, upright)
from vitkit.tasks import segment_postprocess, segment_upsample

ADE_CLASSES = 150


@pytest.fixture(scope="module")
def tiny_segformer_150_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SegFormer with ADE20K's 150 classes (random weights): the full-size stack is 150 planes."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    torch.manual_seed(0)
    labels = {i: f"class_{i}" for i in range(ADE_CLASSES)}
    config = SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32],
                             patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 1], mlp_ratios=[2, 2],
                             decoder_hidden_size=32, num_labels=ADE_CLASSES, id2label=labels,
                             label2id={v: k for k, v in labels.items()})
    path = tmp_path_factory.mktemp("models") / "tiny-segformer-150"
    SegformerForSemanticSegmentation(config).save_pretrained(path)
    SegformerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(path)
    return path


@pytest.fixture
def odd_images(tmp_path: Path) -> list[Path]:
    """Real photos at odd sizes (tall, wide, one below torch's small-output kernel switch) and an EXIF-rotated JPEG."""
    paths = []
    for name, size in (("chelsea.jpg", (301, 199)), ("rocket.jpg", (97, 355)), ("coffee.jpg", (61, 45))):
        path = tmp_path / f"{Path(name).stem}-{size[0]}x{size[1]}.png"
        Image.open(SAMPLE_DATA / name).convert("RGB").resize(size, Image.Resampling.BILINEAR).save(path)
        paths.append(path)
    stored = Image.open(SAMPLE_DATA / "astronaut.jpg").convert("RGB").resize((171, 233)).transpose(
        Image.Transpose.ROTATE_90)  # orientation 6 turns it back to 171 x 233 for display
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "rotated.jpg", quality=95, exif=exif.tobytes())
    return [*paths, tmp_path / "rotated.jpg"]


# --- which channel groups keep torch on the kernel the whole stack takes -----------------------------

def test_channel_groups_never_hold_three_and_small_outputs_stay_whole() -> None:
    groups = segment_upsample._channel_groups
    assert groups(150, 3000, 4000, 4)[-2:] == [(144, 148), (148, 150)]
    assert groups(7, 300, 400, 4) == [(0, 4), (4, 6), (6, 7)]  # not (4, 7): 3 channels take another kernel
    assert groups(7, 300, 400, 3) == [(0, 2), (2, 4), (4, 6), (6, 7)]
    assert groups(3, 300, 400, 1) == [(0, 3)] and groups(150, 60, 60, 1) == [(0, 150)]
    for count in (1, 2, 4, 5, 150):
        spans = groups(count, 300, 400, 1)
        assert spans[0][0] == 0 and spans[-1][1] == count and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))


@pytest.mark.parametrize("per_pass", [1, 2, 4])
@pytest.mark.parametrize("threads", [1, 2])
def test_upsampled_argmax_equals_the_whole_stack(per_pass: int, threads: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Random and tie-heavy score maps: the same maximum and the same first-maximum index, bit for bit."""
    monkeypatch.setattr(segment_upsample, "CHANNELS_PER_PASS", per_pass)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)  # one thread with 3 channels is where torch changes kernel
    try:
        generator = torch.Generator().manual_seed(per_pass)
        for count, low, size in ((3, (16, 16), (301, 299)), (7, (24, 40), (1000, 31)), (150, (16, 16), (97, 355)),
                                 (11, (24, 40), (40, 61))):
            for scores in (torch.randn(count, *low, generator=generator) * 5,
                           torch.randint(0, 3, (count, *low), generator=generator).float()):
                full = torch.nn.functional.interpolate(scores[None], size=size, mode="bilinear",
                                                       align_corners=False)[0]
                best, winner = segment_upsample.upsampled_argmax(scores, size)
                assert torch.equal(winner.long(), full.argmax(0)) and torch.equal(best, full.max(0).values)
    finally:
        torch.set_num_threads(previous)


# --- semantic: the CLI's masks against post_process_semantic_segmentation at full size -----------------

@pytest.mark.parametrize("per_pass", [1, 2])
def test_semantic_150_classes_equals_the_processor(per_pass: int, tiny_segformer_150_dir: Path,
                                                   odd_images: list[Path], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(segment_upsample, "CHANNELS_PER_PASS", per_pass)
    code, records, stderr = segment(*map(str, odd_images), "--model", str(tiny_segformer_150_dir), "--no-draft",
                                    "--out-dir", str(tmp_path / "out"), "-b", "3")
    assert code == 0 and stderr == ""
    for record, path in zip(records, odd_images, strict=True):
        expected = semantic_reference(tiny_segformer_150_dir, path)
        assert expected.shape == (record["height"], record["width"]) == upright(path).size[::-1]
        assert len(np.unique(expected)) > 3
        assert np.array_equal(read_mask(record["mask"]), expected)
        areas = np.bincount(expected.ravel(), minlength=ADE_CLASSES)
        assert {s["id"]: s["area"] for s in record["segments"]} == {c: int(a) for c, a in enumerate(areas) if a}


def test_mask2former_semantic_equals_the_processor(tiny_mask2former_dir: Path, odd_images: list[Path],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Mask2Former's semantic post-processing resizes to 384 x 384 and mixes queries first: the processor's
    own steps, then the channel-at-a-time final resize."""
    from transformers import AutoImageProcessor, AutoModelForUniversalSegmentation

    monkeypatch.setattr(segment_upsample, "CHANNELS_PER_PASS", 1)
    model = AutoModelForUniversalSegmentation.from_pretrained(tiny_mask2former_dir).eval()
    processor = AutoImageProcessor.from_pretrained(tiny_mask2former_dir)
    for path in odd_images:
        image = upright(path)
        with torch.no_grad():
            outputs = model(**processor(images=image, return_tensors="pt"))
        size = (image.height, image.width)
        [expected] = processor.post_process_semantic_segmentation(outputs, target_sizes=[size])
        assert torch.equal(segment_postprocess.semantic_map(processor, outputs, size).long(), expected)


# --- panoptic: segments and maps against post_process_panoptic_segmentation at batch 1 -----------------

@pytest.mark.parametrize("model_fixture", ["tiny_mask2former_dir", "tiny_detr_panoptic_dir"])
@pytest.mark.parametrize("fuse", [False, True], ids=["separate", "fused"])
def test_panoptic_map_equals_the_processor(model_fixture: str, fuse: bool, request: pytest.FixtureRequest,
                                           odd_images: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoImageProcessor, AutoModelForUniversalSegmentation, DetrForSegmentation

    monkeypatch.setattr(segment_upsample, "CHANNELS_PER_PASS", 2)
    model_dir = request.getfixturevalue(model_fixture)
    config = json.loads((model_dir / "config.json").read_text())
    model_class = DetrForSegmentation if config["model_type"] == "detr" else AutoModelForUniversalSegmentation
    model = model_class.from_pretrained(model_dir).eval()
    processor = AutoImageProcessor.from_pretrained(model_dir)
    found = 0
    for path in [*odd_images, SAMPLE_DATA / "chelsea.jpg", SAMPLE_DATA / "astronaut.jpg"]:
        image = upright(path)
        with torch.no_grad():
            outputs = model(**processor(images=image, return_tensors="pt"))
        size = (image.height, image.width)
        fused = frozenset(range(3)) if fuse else frozenset()  # every label fused: ids are reused
        [expected] = processor.post_process_panoptic_segmentation(outputs, label_ids_to_fuse=set(fused),
                                                                  target_sizes=[size])
        result = segment_postprocess.panoptic_map(processor, outputs, size, fused)
        assert result is not None
        assert result.segments == expected["segments_info"]  # ids, labels, fused flags, rounded scores
        assert torch.equal(result.segmentation, expected["segmentation"].clamp(min=0).to(torch.int32))
        found += len(result.segments)
    assert found > 0


def test_panoptic_cli_records_equal_the_processor(tiny_mask2former_dir: Path, tmp_path: Path) -> None:
    path = SAMPLE_DATA / "chelsea.jpg"
    code, [record], _ = segment(str(path), "--mode", "panoptic", "--model", str(tiny_mask2former_dir), "-b", "1",
                                "--no-draft", "--out-dir", str(tmp_path))
    assert code == 0
    expected_map, info = panoptic_reference(tiny_mask2former_dir, path)
    assert np.array_equal(read_mask(record["mask"]), expected_map)
    areas = np.bincount(expected_map.ravel())
    assert [(s["id"], s["score"], s["area"]) for s in record["segments"]] == \
        [(i["id"], i["score"], int(areas[i["id"]])) for i in sorted(info, key=lambda i: i["id"])]


# --- text: the same as the full-size computation the task did before --------------------------------

def test_text_probabilities_equal_the_full_size_computation(tiny_clipseg_dir: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

    monkeypatch.setattr(segment_upsample, "CHANNELS_PER_PASS", 1)
    model = CLIPSegForImageSegmentation.from_pretrained(tiny_clipseg_dir).eval()
    processor = CLIPSegProcessor.from_pretrained(tiny_clipseg_dir)
    prompts = [*PROMPTS, "grass", "a tree"]  # five: more than the kernel's whole-stack cases
    for name, size in (("chelsea.jpg", (451, 300)), ("rocket.jpg", (123, 457))):
        image = Image.open(SAMPLE_DATA / name).convert("RGB").resize(size)
        inputs = processor(text=prompts, images=[image] * len(prompts), padding=True, return_tensors="pt")
        with torch.no_grad():
            logits = model(**inputs).logits  # (P, s, s)
        target = (image.height, image.width)
        full = torch.nn.functional.interpolate(logits[None].float(), size=target, mode="bilinear",
                                               align_corners=False)
        expected_best, expected_winner = full[0].sigmoid().max(dim=0)
        best, winner = segment_upsample.upsampled_argmax(logits, target, lambda start, group: group.sigmoid_())
        mask = torch.where(best > 0.5, winner.long() + 1, 0)
        assert torch.equal(mask, torch.where(expected_best > 0.5, expected_winner + 1, 0))
        assert torch.equal(winner.long(), expected_winner)
        # torch's vectorised and scalar sigmoid differ in the last bit, and which elements take the scalar
        # path (the ends of each thread's range) depends on the tensor's length: a few of the smaller
        # tensors' probabilities may be 1 ulp off the whole stack's; every other one is the same float.
        differs = best != expected_best
        assert differs.sum() <= 64 and torch.allclose(best, expected_best, rtol=2e-7, atol=0)
        assert mask.unique().numel() > 2


# --- memory: a 12 MP photo in a child process -------------------------------------------------------

_CHILD_CLI = """
import sys
from vitkit.cli import main
# VmHWM (this address space's peak), not getrusage's ru_maxrss: Linux keeps ru_maxrss across execve,
# so a child of a large pytest process would report its parent's peak.
def report():
    with open("/proc/self/status") as status:
        peak = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    sys.stderr.write(f"\\npeak_kb={peak}\\n")
sys.argv = ["vitkit", *sys.argv[1:]]
try:
    main()
finally:
    report()
"""
PEAK_LIMIT_KB = 1_500_000


def _twelve_megapixels(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)  # structure at several scales, as a photo
    Image.fromarray(coarse).resize((4000, 3000), Image.Resampling.BICUBIC).save(path, quality=90)
    return path


def test_a_batch_of_12_megapixel_photos_with_150_classes_stays_under_1_5_gb(tiny_segformer_150_dir: Path,
                                                                            tmp_path: Path) -> None:
    """Two 12 MP photos in one batch (the default batch size holds both): post-processing takes one image
    at a time and waiting masks are compact, so the peak is that of one photo, not two."""
    first = _twelve_megapixels(tmp_path / "photos" / "first.jpg")
    second = tmp_path / "photos" / "second.jpg"
    second.write_bytes(first.read_bytes())
    # --workers 0: decoding, the model, post-processing and both PNGs all in the one measured process.
    result = subprocess.run([sys.executable, "-c", _CHILD_CLI, "segment", str(tmp_path / "photos"), "--model",
                             str(tiny_segformer_150_dir), "--device", "cpu", "--workers", "0", "--out-dir",
                             str(tmp_path / "out"), "--format", "jsonl"],
                            capture_output=True, text=True, env=os.environ.copy(), timeout=600)
    assert result.returncode == 0, result.stderr
    peak_kb = int(result.stderr.rsplit("peak_kb=", 1)[1])
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 2 and records[0]["segments"] == records[1]["segments"]
    for record in records:
        assert (record["width"], record["height"]) == (4000, 3000)
        assert Image.open(record["mask"]).size == (4000, 3000) == Image.open(record["overlay"]).size
        assert sum(s["area"] for s in record["segments"]) == 12_000_000
        assert len(record["segments"]) > 3  # several of the 150 classes win somewhere
    assert peak_kb < PEAK_LIMIT_KB, f"peak {peak_kb} KiB"
    print(f"two 12 MP photos, one batch, semantic with 150 classes: peak {peak_kb} KiB")
