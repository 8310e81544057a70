"""`vitkit segment` end to end: parity with each processor's own post-processing, EXIF, files, instances."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from typer.testing import CliRunner

from tests.conftest import BROKEN_SAMPLES, GOOD_SAMPLES, SAMPLE_DATA, SAMPLE_ERRORS, parse_jsonl
from vitkit.outputs import masks
from vitkit.cli import app

runner = CliRunner()
LABELS = {0: "sky", 1: "ground", 2: "cat", 3: "rocket"}
PROMPTS = ("a cat", "the sky", "a rocket")


def segment(*args: str) -> tuple[int, list[dict], str]:
    result = runner.invoke(app, ["segment", *args])
    return result.exit_code, parse_jsonl(result.stdout), result.stderr


def upright(path: Path) -> Image.Image:
    return ImageOps.exif_transpose(Image.open(path)).convert("RGB")


def read_mask(path: str) -> np.ndarray:
    return np.array(Image.open(path)).astype(np.int64)


# --- tiny random models, each saved with its own processor by save_pretrained ---------------------

@pytest.fixture(scope="module")
def tiny_segformer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    torch.manual_seed(0)
    config = SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32],
                             patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 1], mlp_ratios=[2, 2],
                             decoder_hidden_size=32, num_labels=4, id2label=LABELS,
                             label2id={v: k for k, v in LABELS.items()})
    path = tmp_path_factory.mktemp("models") / "tiny-segformer"
    SegformerForSemanticSegmentation(config).save_pretrained(path)
    SegformerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_mask2former_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import (Mask2FormerConfig, Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessor,
                              SwinConfig)

    torch.manual_seed(0)
    labels = {0: "cat", 1: "dog", 2: "sky"}
    backbone = SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                          window_size=4, out_features=["stage1", "stage2", "stage3", "stage4"])
    config = Mask2FormerConfig(backbone_config=backbone, use_pretrained_backbone=False, feature_size=32,
                               mask_feature_size=32, hidden_dim=32, encoder_feedforward_dim=64, dim_feedforward=64,
                               encoder_layers=1, decoder_layers=2, num_attention_heads=2, num_queries=10,
                               common_stride=4, num_labels=3, id2label=labels,
                               label2id={v: k for k, v in labels.items()})
    model = Mask2FormerForUniversalSegmentation(config)
    with torch.no_grad():
        # Random heads give no confident queries and flat masks; wider ones make real segments.
        model.class_predictor.weight.normal_(0, 1.0)
        model.model.pixel_level_module.decoder.mask_projection.weight.normal_(0, 1.0)
    path = tmp_path_factory.mktemp("models") / "tiny-mask2former"
    model.save_pretrained(path)
    Mask2FormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_detr_panoptic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import DetrConfig, DetrForSegmentation, DetrImageProcessor, ResNetConfig

    torch.manual_seed(0)
    labels = {0: "cat", 1: "dog", 2: "sky"}
    backbone = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], layer_type="basic",
                            out_features=["stage1", "stage2", "stage3", "stage4"])
    # The mask head needs d_model + attention heads divisible by 8.
    config = DetrConfig(use_timm_backbone=False, backbone_config=backbone, use_pretrained_backbone=False, d_model=32,
                        encoder_layers=1, decoder_layers=1, encoder_ffn_dim=64, decoder_ffn_dim=64,
                        encoder_attention_heads=8, decoder_attention_heads=8, num_queries=10, num_labels=3,
                        id2label=labels, label2id={v: k for k, v in labels.items()})
    model = DetrForSegmentation(config)
    with torch.no_grad():
        for name, param in model.mask_head.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)  # zero-initialised group norms would flatten every mask
        model.detr.class_labels_classifier.weight.normal_(0, 1.0)
    path = tmp_path_factory.mktemp("models") / "tiny-detr-panoptic"
    model.save_pretrained(path)
    DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}, format="coco_panoptic").save_pretrained(path)
    return path


def _byte_level_vocab() -> dict[str, int]:
    """CLIP's byte-to-unicode alphabet, each symbol alone and word-final: a BPE vocabulary with no merges."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols = [chr(b) for b in printable] + [chr(256 + i) for i in range(256 - len(printable))]
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}


@pytest.fixture(scope="module")
def tiny_clipseg_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import (CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegProcessor, CLIPTokenizer,
                              ViTImageProcessor)

    torch.manual_seed(0)
    vocab = _byte_level_vocab()
    text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=32, bos_token_id=len(vocab) - 2,
                eos_token_id=len(vocab) - 1, pad_token_id=len(vocab) - 1)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=64,
                  patch_size=16)
    config = CLIPSegConfig(text_config=text, vision_config=vision, projection_dim=16, extract_layers=[0, 1],
                           reduce_dim=16, decoder_num_attention_heads=2, decoder_intermediate_size=32)
    path = tmp_path_factory.mktemp("models") / "tiny-clipseg"
    CLIPSegForImageSegmentation(config).save_pretrained(path)
    processor = CLIPSegProcessor(image_processor=ViTImageProcessor(size={"height": 64, "width": 64}),
                                 tokenizer=CLIPTokenizer(vocab=vocab, merges=[]))
    processor.save_pretrained(path)
    return path


# --- references: transformers alone, on the upright image at its original size ------------------------

def semantic_reference(model_dir: Path, path: Path) -> np.ndarray:
    from transformers import SegformerForSemanticSegmentation, SegformerImageProcessor

    model = SegformerForSemanticSegmentation.from_pretrained(model_dir).eval()
    processor = SegformerImageProcessor.from_pretrained(model_dir)
    image = upright(path)
    with torch.no_grad():
        outputs = model(**processor(images=image, return_tensors="pt"))
    [result] = processor.post_process_semantic_segmentation(outputs, target_sizes=[(image.height, image.width)])
    return result.numpy()


def panoptic_reference(model_dir: Path, path: Path) -> tuple[np.ndarray, list[dict]]:
    from transformers import AutoImageProcessor, AutoModelForUniversalSegmentation, DetrForSegmentation

    config = json.loads((model_dir / "config.json").read_text())
    model_class = DetrForSegmentation if config["model_type"] == "detr" else AutoModelForUniversalSegmentation
    model = model_class.from_pretrained(model_dir).eval()
    processor = AutoImageProcessor.from_pretrained(model_dir)
    image = upright(path)
    with torch.no_grad():
        outputs = model(**processor(images=image, return_tensors="pt"))
    [result] = processor.post_process_panoptic_segmentation(outputs, label_ids_to_fuse=set(),
                                                            target_sizes=[(image.height, image.width)])
    return result["segmentation"].clamp(min=0).numpy().astype(np.int64), result["segments_info"]


def text_reference(model_dir: Path, path: Path, prompts: tuple[str, ...]) -> np.ndarray:
    from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

    model = CLIPSegForImageSegmentation.from_pretrained(model_dir).eval()
    processor = CLIPSegProcessor.from_pretrained(model_dir)
    image = upright(path)
    inputs = processor(text=list(prompts), images=[image] * len(prompts), padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits.reshape(len(prompts), *inputs["pixel_values"].shape[-2:])
        probabilities = torch.nn.functional.interpolate(logits[None], size=(image.height, image.width),
                                                        mode="bilinear", align_corners=False)[0].sigmoid().numpy()
    return np.where(probabilities.max(axis=0) > 0.5, probabilities.argmax(axis=0) + 1, 0)


def assert_segments_match_mask(record: dict, mask: np.ndarray, background: int | None) -> None:
    """Every segment's id, area and box are those of its pixels in the mask; nothing else is in the mask."""
    assert mask.shape == (record["height"], record["width"])
    ids = [s["id"] for s in record["segments"]]
    assert len(ids) == len(set(ids))
    assert set(np.unique(mask).tolist()) - {background} == set(ids)
    assert sum(s["area"] for s in record["segments"]) <= record["width"] * record["height"]
    for s in record["segments"]:
        rows, cols = np.nonzero(mask == s["id"])
        assert s["area"] == len(rows) > 0
        assert s["box"] == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
        x0, y0, x1, y1 = s["box"]
        assert 0 <= x0 < x1 <= record["width"] and 0 <= y0 < y1 <= record["height"]
        assert isinstance(s["label"], str) and s["label"]


# --- semantic -------------------------------------------------------------------------------------

def test_semantic_mask_is_the_processors_argmax(tiny_segformer_dir: Path, tmp_path: Path) -> None:
    paths = [SAMPLE_DATA / name for name in GOOD_SAMPLES]
    code, records, stderr = segment(*map(str, paths), "--model", str(tiny_segformer_dir), "--out-dir",
                                    str(tmp_path / "out"), "--no-draft", "-b", "4")
    assert code == 0 and stderr == ""
    for record, path in zip(records, paths, strict=True):
        mask_image = Image.open(record["mask"])
        assert mask_image.mode == "L" and mask_image.size == (record["width"], record["height"])
        mask = read_mask(record["mask"])
        assert np.array_equal(mask, semantic_reference(tiny_segformer_dir, path))
        assert_segments_match_mask(record, mask, background=None)
        assert all(s["label"] == LABELS[s["id"]] and s["score"] is None for s in record["segments"])
        overlay = Image.open(record["overlay"])
        assert overlay.mode == "RGB" and overlay.size == mask_image.size
    assert len({len(r["segments"]) for r in records} | {0}) > 1  # the maps have real structure


def test_exif_rotated_jpeg_mask_matches_the_displayed_image(tiny_segformer_dir: Path, tmp_path: Path) -> None:
    displayed = Image.open(SAMPLE_DATA / "rocket.jpg").convert("RGB").resize((120, 200))
    stored = displayed.transpose(Image.Transpose.ROTATE_90)  # orientation 6 turns it back for display
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "rotated.jpg", quality=95, exif=exif.tobytes())
    ImageOps.exif_transpose(Image.open(tmp_path / "rotated.jpg")).save(tmp_path / "upright.png")
    code, [rotated, straight], _ = segment(str(tmp_path / "rotated.jpg"), str(tmp_path / "upright.png"),
                                           "--model", str(tiny_segformer_dir), "--out-dir", str(tmp_path / "out"))
    assert code == 0
    assert (rotated["width"], rotated["height"]) == (120, 200) == (straight["width"], straight["height"])
    assert Image.open(rotated["mask"]).size == (120, 200) == Image.open(rotated["overlay"]).size
    assert np.array_equal(read_mask(rotated["mask"]), read_mask(straight["mask"]))
    assert rotated["segments"] == straight["segments"]


@pytest.mark.parametrize("size", [(1000, 30), (1, 5000)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_a_fixed_size_processor_gets_thin_images_unsquashed(size: tuple[int, int], tiny_segformer_dir: Path,
                                                            tmp_path: Path) -> None:
    """SegFormer resizes any shape to its fixed input: squashing first would only lose detail."""
    path = tmp_path / "thin.png"
    Image.open(SAMPLE_DATA / "rocket.jpg").convert("RGB").resize(size, Image.Resampling.BILINEAR).save(path)
    code, [record], stderr = segment(str(path), "--model", str(tiny_segformer_dir), "--out-dir", str(tmp_path / "out"))
    assert code == 0, stderr
    expected = semantic_reference(tiny_segformer_dir, path)
    assert len(np.unique(expected)) > 1  # a map with structure, which squashing would shift
    assert np.array_equal(read_mask(record["mask"]), expected)


def test_an_overlay_that_cannot_be_made_is_that_inputs_error(tiny_segformer_dir: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A file that changed after it was read fails alone when decoded again for its overlay."""
    import vitkit.tasks.segment
    from vitkit.errors import InputError

    paths = [SAMPLE_DATA / name for name in GOOD_SAMPLES[:3]]
    decode = vitkit.tasks.segment.decode_image

    def changed_since(path: str, *args: object) -> object:
        if path == str(paths[1]):
            raise InputError("truncated image data (file cut short)", kind="truncated")
        return decode(path, *args)

    monkeypatch.setattr(vitkit.tasks.segment, "decode_image", changed_since)
    code, records, stderr = segment(*map(str, paths), "--model", str(tiny_segformer_dir), "--workers", "0",
                                    "--out-dir", str(tmp_path / "out"))
    assert code == 1
    assert records[1] == {"path": str(paths[1]), "error": "truncated image data (file cut short)"}
    assert stderr.splitlines()[0] == f"error: {paths[1]}: truncated image data (file cut short)"
    assert all(Path(r["overlay"]).is_file() for r in (records[0], records[2]))


def test_an_input_whose_second_file_fails_keeps_no_file(tiny_segformer_dir: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Files are all or nothing per input: an overlay Pillow cannot encode (as a tRNS PNG once gave:
    "transparency for RGB must be list or tuple") fails its input and leaves no orphan mask."""
    paths = [SAMPLE_DATA / name for name in GOOD_SAMPLES[1:4]]  # three different sizes
    failing_size = upright(paths[1]).size
    overlay = masks.overlay_image

    def overlay_with_bad_transparency(image: Image.Image, *args: object) -> Image.Image:
        result = overlay(image, *args)
        if image.size == failing_size:
            result.info["transparency"] = 0  # an int is only valid for palette and grey images
        return result

    monkeypatch.setattr(masks, "overlay_image", overlay_with_bad_transparency)
    out = tmp_path / "out"
    code, records, _ = segment(*map(str, paths), "--model", str(tiny_segformer_dir), "--workers", "0",
                               "--out-dir", str(out), "-b", "3")
    assert code == 1
    assert records[1] == {"path": str(paths[1]),
                          "error": "cannot write its output: ValueError: transparency for RGB must be list or tuple"}
    written = sorted(p.name for p in out.rglob("*") if p.is_file())
    assert written == sorted(f"{p.name}.{kind}.png" for p in (paths[0], paths[2]) for kind in ("mask", "overlay"))


def test_broken_files_keep_their_slots_and_outputs_never_collide(tiny_segformer_dir: Path, photos: Path,
                                                                tmp_path: Path) -> None:
    (photos / "more").mkdir()
    shutil.copy(photos / "chelsea.jpg", photos / "more" / "chelsea.jpg")  # same name, another folder
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in photos.rglob("*") if p.is_file()}
    out = tmp_path / "out"
    code, records, stderr = segment(str(photos), "--model", str(tiny_segformer_dir), "--out-dir", str(out),
                                    "--workers", "2", "-b", "3")
    assert code == 1 and "3 of 10 inputs failed" in stderr
    relative = [Path(r["path"]).relative_to(photos).as_posix() for r in records]
    assert relative == sorted([f"broken/{n}" for n in BROKEN_SAMPLES] + GOOD_SAMPLES + ["more/chelsea.jpg"])
    written = []
    for record, name in zip(records, relative):
        if name.startswith("broken/"):
            assert set(record) == {"path", "error"} and record["error"]
            continue
        assert set(record) == {"path", "width", "height", "segments", "mask", "overlay"}
        for kind in ("mask", "overlay"):
            assert Path(record[kind]).is_file() and Path(record[kind]).is_relative_to(out)
            assert Image.open(record[kind]).size == (record["width"], record["height"])
            written.append(record[kind])
    assert len(written) == len(set(written)) == 2 * 7
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in photos.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == sorted(Path(w).name for w in written)


def test_without_out_dir_segments_only_and_csv_long_form(tiny_segformer_dir: Path) -> None:
    code, [record], _ = segment(str(SAMPLE_DATA / "chelsea.jpg"), "--model", str(tiny_segformer_dir))
    assert code == 0 and record["mask"] is None and record["overlay"] is None and record["segments"]
    result = runner.invoke(app, ["segment", str(SAMPLE_DATA / "chelsea.jpg"), str(SAMPLE_ERRORS / "empty.jpg"),
                                 "--model", str(tiny_segformer_dir), "--format", "csv"])
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == len(record["segments"]) + 1
    assert [json.loads(r["box"]) for r in rows[:-1]] == [s["box"] for s in record["segments"]]
    assert rows[-1]["error"] == "empty file (0 bytes)"


def test_min_area_turns_small_classes_void(tiny_segformer_dir: Path, tmp_path: Path) -> None:
    path = SAMPLE_DATA / "chelsea.jpg"
    full = semantic_reference(tiny_segformer_dir, path)
    areas = np.bincount(full.ravel(), minlength=4)
    min_area = int(np.sort(areas[areas > 0])[-2])  # keeps the two largest classes
    code, [record], _ = segment(str(path), "--model", str(tiny_segformer_dir), "--no-draft", "--min-area",
                                str(min_area), "--out-dir", str(tmp_path))
    assert code == 0
    kept = [c for c in range(4) if areas[c] >= min_area]
    assert [s["id"] for s in record["segments"]] == kept
    expected = np.where(np.isin(full, kept), full, masks.L_MAX)
    assert np.array_equal(read_mask(record["mask"]), expected)


# --- instances ----------------------------------------------------------------------------------

def test_split_instances_on_a_known_map() -> None:
    class_map = np.array([
        [1, 1, 0, 0, 2, 2],
        [1, 1, 0, 0, 2, 2],
        [0, 0, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0],
        [0, 0, 0, 1, 0, 1],
        [0, 0, 0, 0, 0, 0],
    ])
    instance_map, owners = masks.split_instances(class_map)
    assert owners == [0, 1, 1, 1, 2]  # class 1: a block, a diagonal pair (8-connected: one), a lone pixel
    assert instance_map[0, 0] == 2 and instance_map[3, 2] == instance_map[4, 3] == 3 and instance_map[4, 5] == 4
    assert instance_map[0, 4] == 5 and set(instance_map[class_map == 0].tolist()) == {1}
    stats = masks.segment_stats(instance_map)
    assert [(s.id, s.area, s.box) for s in stats.values()] == [
        (1, 25, (0, 0, 6, 6)), (2, 4, (0, 0, 2, 2)), (3, 2, (2, 3, 4, 5)), (4, 1, (5, 4, 6, 5)), (5, 4, (4, 0, 6, 2))]

    instance_map, owners = masks.split_instances(class_map, min_area=2)
    assert owners == [0, 1, 1, 2] and instance_map[4, 5] == 0  # the lone pixel is gone, ids stay consecutive
    assert sorted(np.unique(instance_map).tolist()) == [0, 1, 2, 3, 4]


def test_instances_cli_unique_ids_and_min_area(tiny_segformer_dir: Path, tmp_path: Path) -> None:
    paths = [SAMPLE_DATA / "chelsea.jpg", SAMPLE_DATA / "camera.jpg"]
    code, records, _ = segment(*map(str, paths), "--model", str(tiny_segformer_dir), "--instances", "--min-area", "50",
                               "--out-dir", str(tmp_path), "--no-draft")
    assert code == 0
    for record, path in zip(records, paths):
        mask = read_mask(record["mask"])
        ids = [s["id"] for s in record["segments"]]
        assert ids == list(range(1, len(ids) + 1))
        assert all(s["area"] >= 50 for s in record["segments"])
        assert_segments_match_mask(record, mask, background=0)
        classes = semantic_reference(tiny_segformer_dir, path)
        for s in record["segments"]:
            assert {LABELS[c] for c in np.unique(classes[mask == s["id"]]).tolist()} == {s["label"]}
    labels = [s["label"] for s in records[0]["segments"]]
    assert len(labels) > len(set(labels))  # some class was split into several components


def test_label_png_depth_and_overlay_blending(tmp_path: Path) -> None:
    label_map = np.arange(12 * 30).reshape(12, 30) % 301  # ids up to 300: more than 8 bits hold
    masks.label_image(label_map, 300).save(tmp_path / "wide.png")
    assert Image.open(tmp_path / "wide.png").mode == "I;16"
    assert np.array_equal(read_mask(str(tmp_path / "wide.png")), label_map)
    assert masks.label_image(label_map % 256, 255).mode == "L"

    image = Image.fromarray(np.full((12, 30, 3), 200, dtype=np.uint8))
    assert np.array_equal(np.array(masks.overlay_image(image, label_map, 0.0)), np.array(image))
    full = np.array(masks.overlay_image(image, label_map, 1.0, uncoloured=(0,)))
    assert np.array_equal(full[label_map == 0], np.array(image)[label_map == 0])  # background left as it was
    assert np.array_equal(full[label_map == 7], np.tile(masks.PALETTE[7], ((label_map == 7).sum(), 1)))


# --- panoptic -----------------------------------------------------------------------------------

@pytest.mark.parametrize("model_fixture", ["tiny_mask2former_dir", "tiny_detr_panoptic_dir"])
def test_panoptic_equals_the_processor_and_pads_mixed_sizes(model_fixture: str, request: pytest.FixtureRequest,
                                                             mixed_samples: Path, tmp_path: Path) -> None:
    model_dir = request.getfixturevalue(model_fixture)
    paths = [SAMPLE_DATA / name for name in ("astronaut.jpg", "chelsea.jpg", "rocket.jpg")]
    # One image a batch: nothing padded, so the result is exactly the processor's own.
    code, records, stderr = segment(*map(str, paths), "--mode", "panoptic", "--model", str(model_dir), "-b", "1",
                                    "--no-draft", "--workers", "0", "--out-dir", str(tmp_path / "single"))
    assert code == 0 and stderr == ""
    for record, path in zip(records, paths, strict=True):
        expected, info = panoptic_reference(model_dir, path)
        mask = read_mask(record["mask"])
        assert np.array_equal(mask, expected)
        assert_segments_match_mask(record, mask, background=0)
        scores = {i["id"]: i["score"] for i in info}
        assert all(s["score"] == pytest.approx(scores[s["id"]]) for s in record["segments"])
    assert sum(len(r["segments"]) for r in records) > 0
    # Mixed sizes in one batch, padded by the processor in worker processes; failures keep their slots.
    code, records, _ = segment(str(mixed_samples), "--mode", "panoptic", "--model", str(model_dir), "-b", "9",
                               "--workers", "1", "--out-dir", str(tmp_path / "batched"))
    assert code == 1 and len(records) == 9
    for record in records:
        if "error" not in record:
            assert_segments_match_mask(record, read_mask(record["mask"]), background=0)


def test_crop_to_valid_keeps_the_images_own_part_of_the_canvas() -> None:
    from vitkit.tasks.segment import _crop_to_valid

    valid = torch.zeros(64, 96, dtype=torch.long)
    valid[:64, :64] = 1  # a square image padded on the right
    query_masks = torch.arange(24.0).expand(1, 5, 16, 24)  # (1, Q, h, w) at a quarter of the canvas
    cropped = _crop_to_valid(query_masks, valid)
    assert cropped.shape == (1, 5, 16, 16) and cropped[0, 0, 0, -1] == 15


# --- text ---------------------------------------------------------------------------------------

def test_text_prompts_one_mask_each(tiny_clipseg_dir: Path, tmp_path: Path) -> None:
    paths = [SAMPLE_DATA / name for name in ("chelsea.jpg", "rocket.jpg", "camera.jpg")]
    prompt_args = [arg for prompt in PROMPTS for arg in ("--prompt", prompt)]
    code, records, _ = segment(*map(str, paths), "--mode", "text", *prompt_args, "--model", str(tiny_clipseg_dir),
                               "--no-draft", "-b", "2", "--out-dir", str(tmp_path))
    assert code == 0
    for record, path in zip(records, paths, strict=True):
        mask = read_mask(record["mask"])
        expected = text_reference(tiny_clipseg_dir, path, PROMPTS)
        assert (mask == expected).mean() > 0.999  # batched float sums may flip a pixel at exactly 0.5
        assert_segments_match_mask(record, mask, background=0)
        for s in record["segments"]:
            assert s["label"] == PROMPTS[s["id"] - 1] and 0.5 < s["score"] <= 1.0
    assert any(len(r["segments"]) > 1 for r in records)


def test_usage_errors_exit_2(tiny_clipseg_dir: Path, tiny_segformer_dir: Path) -> None:
    image = str(SAMPLE_DATA / "chelsea.jpg")
    cases = [
        (["--mode", "text"], "needs at least one --prompt"),
        (["--prompt", "a cat"], "--prompt only applies to --mode text"),
        (["--mode", "panoptic", "--instances"], "--instances only applies"),
        (["--model", str(tiny_clipseg_dir)], "cannot do semantic segmentation; this model does --mode text"),
        (["--mode", "panoptic", "--model", str(tiny_segformer_dir)], "cannot do panoptic segmentation"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["segment", image, *args])
        assert result.exit_code == 2 and message in result.stderr, (args, result.stderr)
    help_text = runner.invoke(app, ["segment", "--help"])
    assert help_text.exit_code == 0 and "Example" in help_text.stdout


@pytest.mark.parametrize(("mode", "alias"), [("semantic", "segformer-b0"), ("panoptic", "mask2former-swin-t"),
                                             ("text", "clipseg")])
def test_each_mode_defaults_to_its_catalogue_model(mode: str, alias: str) -> None:
    result = runner.invoke(app, ["segment", str(SAMPLE_DATA / "chelsea.jpg"), "--mode", mode,
                                 *(["--prompt", "a cat"] if mode == "text" else [])])
    assert result.exit_code == 3 and f"vitkit models pull {alias}" in result.stderr


@pytest.mark.parametrize("model_fixture", ["tiny_segformer_dir", "tiny_mask2former_dir", "tiny_detr_panoptic_dir"])
def test_int8_runs_every_segmentation_model(model_fixture: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """DETR's panoptic attention map reads a Linear layer's `.weight` directly; that layer stays fp32."""
    mode = "semantic" if model_fixture == "tiny_segformer_dir" else "panoptic"
    code, records, stderr = segment(str(SAMPLE_DATA / "chelsea.jpg"), "--mode", mode, "--precision", "int8",
                                    "--model", str(request.getfixturevalue(model_fixture)), "--out-dir", str(tmp_path))
    assert code == 0, stderr
    assert len(records) == 1 and Path(records[0]["mask"]).is_file()


@pytest.mark.parametrize(("model_fixture", "mode"), [("tiny_segformer_dir", "semantic"), ("tiny_mask2former_dir", "panoptic"),
                                                     ("tiny_detr_panoptic_dir", "panoptic")])
def test_channels_last_weights_give_the_same_segments(model_fixture: str, mode: str, request: pytest.FixtureRequest,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GPUs get convolutional models in channels_last layout; the layout is device-independent, so its
    effect on every reshape in the model code is checked here on CPU (no GPU in CI)."""
    from vitkit.models import loading

    model_dir = str(request.getfixturevalue(model_fixture))
    paths = [str(SAMPLE_DATA / name) for name in GOOD_SAMPLES[:2]]

    def run(out_dir: Path) -> list[dict]:
        loading.clear_model_cache()  # the cache key does not include the layout
        code, records, stderr = segment(*paths, "--mode", mode, "--model", model_dir, "-b", "2", "--out-dir", str(out_dir))
        assert code == 0, stderr
        return records

    plain = run(tmp_path / "plain")
    monkeypatch.setattr(loading, "prefers_channels_last", lambda module, device: True)
    channels_last = run(tmp_path / "channels_last")
    loading.clear_model_cache()
    for a, b in zip(plain, channels_last, strict=True):
        # Another memory layout sums in another order: scores may move in the last printed digit.
        assert [{**s, "score": pytest.approx(s["score"], abs=1e-5)} for s in a["segments"]] == b["segments"]
        assert np.array_equal(np.asarray(Image.open(a["mask"])), np.asarray(Image.open(b["mask"])))
