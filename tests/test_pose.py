"""`vitkit pose` end to end: keypoints against transformers' own ViTPose preprocessing and
post_process_pose_estimation on the same boxes (whole image, --boxes-from, the detector's), on a
non-square and an EXIF-rotated image; one pose forward per batch; broken files; drawings; COCO."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageOps

import vitkit
from tests.conftest import BROKEN_SAMPLES, GOOD_SAMPLES, SAMPLE_DATA, copy_mixed_samples, parse_jsonl, run_vitkit
from vitkit.errors import UsageError
from vitkit.models.backends.hf_pose import COCO_KEYPOINTS

TOLERANCE_PX = 1e-4


@pytest.fixture(scope="session")
def tiny_vitpose_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random ViTPose (simple decoder, 17 COCO keypoints) and its image processor, at 64x48 crops."""
    from transformers import VitPoseBackboneConfig, VitPoseConfig, VitPoseForPoseEstimation, VitPoseImageProcessor

    torch.manual_seed(0)
    backbone = VitPoseBackboneConfig(image_size=[64, 48], patch_size=[16, 16], hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, mlp_ratio=2, out_indices=[2])
    config = VitPoseConfig(backbone_config=backbone, id2label=dict(enumerate(COCO_KEYPOINTS)))
    path = tmp_path_factory.mktemp("models") / "tiny-vitpose"
    VitPoseForPoseEstimation(config).save_pretrained(path)
    VitPoseImageProcessor(size={"height": 64, "width": 48}).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def two_images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A non-square photo and an EXIF-rotated one (stored landscape, displayed portrait)."""
    folder = tmp_path_factory.mktemp("pose-images")
    wide = folder / "wide.jpg"
    Image.open(SAMPLE_DATA / "rocket.jpg").convert("RGB").crop((0, 0, 600, 200)).save(wide, quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    rotated = folder / "rotated.jpg"
    Image.open(SAMPLE_DATA / "chelsea.jpg").convert("RGB").save(rotated, quality=95, exif=exif.tobytes())
    return [wide, rotated]


def reference_keypoints(model_dir: Path, image_paths: list[Path], boxes_xyxy: list[list[list[float]]]) -> list:
    """transformers alone: the processor's crops of every image's boxes in one batch (as vitkit batches
    them: batched matrix products round differently from single ones, and DARK's refinement of a random
    model's flat heatmaps magnifies that), the model, its post_process_pose_estimation."""
    from transformers import VitPoseForPoseEstimation, VitPoseImageProcessor

    processor = VitPoseImageProcessor.from_pretrained(model_dir)
    model = VitPoseForPoseEstimation.from_pretrained(model_dir).eval()
    images = [ImageOps.exif_transpose(Image.open(path)).convert("RGB") for path in image_paths]
    boxes = [[[x0, y0, x1 - x0, y1 - y0] for x0, y0, x1, y1 in found] for found in boxes_xyxy]
    kept = [index for index, found in enumerate(boxes) if found]
    with torch.no_grad():
        outputs = model(**processor(images=[images[i] for i in kept], boxes=[boxes[i] for i in kept],
                                    return_tensors="pt"))
    results = iter(processor.post_process_pose_estimation(outputs, boxes=[boxes[i] for i in kept]))
    return [[person["keypoints"] for person in next(results)] if found else [] for found in boxes]


def assert_matches(records: list, model_dir: Path, image_paths: list[Path]) -> None:
    expected = reference_keypoints(model_dir, image_paths, [[person.box for person in r.people] for r in records])
    assert sum(len(found) for found in expected) > 0
    for record, keypoints_of_image in zip(records, expected, strict=True):
        assert len(keypoints_of_image) == len(record.people)
        for person, keypoints in zip(record.people, keypoints_of_image):
            assert [k.name for k in person.keypoints] == list(COCO_KEYPOINTS)
            got = torch.tensor([[k.x, k.y] for k in person.keypoints])
            assert (got - keypoints).abs().max().item() < TOLERANCE_PX


def test_whole_image_matches_transformers(tiny_vitpose_dir: Path, two_images: list[Path]) -> None:
    records = list(vitkit.pose([str(p) for p in two_images], model=str(tiny_vitpose_dir), whole_image=True,
                               device="cpu", workers=0))
    displayed = [ImageOps.exif_transpose(Image.open(p)).size for p in two_images]
    assert [(r.width, r.height) for r in records] == displayed == [(600, 200), (300, 451)]
    for record in records:
        assert len(record.people) == 1 and record.people[0].score is None
        assert record.people[0].box == [0.0, 0.0, float(record.width), float(record.height)]
    assert_matches(records, tiny_vitpose_dir, two_images)


def test_boxes_from_detect_records_match_transformers(tiny_vitpose_dir: Path, two_images: list[Path],
                                                      tmp_path: Path) -> None:
    boxes = {str(two_images[0]): [[10, 20, 200, 190, 0.95], [300, 5, 580, 150, 0.5]],
             str(two_images[1]): [[30.5, 40, 250, 400, 0.8]]}
    lines = [{"path": path, "width": 1, "height": 1, "detections": [
        {"label": "person", "class_id": 1, "score": s, "box": [x0, y0, x1, y1]} for x0, y0, x1, y1, s in found]
              + [{"label": "dog", "class_id": 18, "score": 0.99, "box": [0, 0, 5, 5]}]}
             for path, found in boxes.items()]
    (tmp_path / "boxes.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    records = list(vitkit.pose([str(p) for p in two_images], model=str(tiny_vitpose_dir), device="cpu", workers=0,
                               boxes_from=str(tmp_path / "boxes.jsonl")))
    assert [[p.score for p in r.people] for r in records] == [[0.95, 0.5], [0.8]]  # every person box, no dog
    assert_matches(records, tiny_vitpose_dir, two_images)
    kept = list(vitkit.pose([str(p) for p in two_images], model=str(tiny_vitpose_dir), device="cpu", workers=0,
                            boxes_from=str(tmp_path / "boxes.jsonl"), person_threshold=0.9))
    assert [[p.score for p in r.people] for r in kept] == [[0.95], []]


def test_detector_boxes_match_transformers_with_one_pose_forward_per_batch(
        tiny_vitpose_dir: Path, tiny_detr_dir: Path, two_images: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import VitPoseForPoseEstimation

    calls: list[int] = []
    original = VitPoseForPoseEstimation.forward

    def counted(self, pixel_values, *args, **kwargs):
        calls.append(pixel_values.shape[0])
        return original(self, pixel_values, *args, **kwargs)

    monkeypatch.setattr(VitPoseForPoseEstimation, "forward", counted)
    # The tiny DETR knows cat, dog and rocket (and finds dogs on these images): its dogs stand in for people.
    paths = [str(p) for p in two_images]
    records = list(vitkit.pose(paths, model=str(tiny_vitpose_dir), detector=str(tiny_detr_dir), person_class="dog",
                               person_threshold=0.0, device="cpu", workers=0, batch_size=4))
    detected = list(vitkit.detect(paths, model=str(tiny_detr_dir), classes="dog", threshold=0.0, device="cpu",
                                  workers=0, batch_size=4, draft=False))
    for record, found in zip(records, detected, strict=True):
        assert [p.box for p in record.people] == [d.box for d in found.detections]
        assert [p.score for p in record.people] == [d.score for d in found.detections]
    people = sum(len(r.people) for r in records)
    assert people > 2 and calls == [people]  # every person of the batch in one call
    assert_matches(records, tiny_vitpose_dir, two_images)
    calls.clear()
    list(vitkit.pose(paths, model=str(tiny_vitpose_dir), whole_image=True, device="cpu", workers=0, batch_size=1))
    assert calls == [1, 1]


def test_cli_end_to_end_broken_files_drawings_and_coco(tiny_vitpose_dir: Path, tmp_path: Path) -> None:
    photos = copy_mixed_samples(tmp_path / "photos")
    result = run_vitkit("pose", str(photos), "--model", str(tiny_vitpose_dir), "--whole-image", "--device", "cpu",
                        "--format", "jsonl", "--out-dir", str(tmp_path / "drawn"), "--coco", str(tmp_path / "k.json"))
    assert result.returncode == 1, result.stderr  # some inputs failed
    records = parse_jsonl(result.stdout)
    relative = [str(Path(r["path"]).relative_to(photos)) for r in records]
    assert relative == sorted([f"broken/{n}" for n in BROKEN_SAMPLES] + GOOD_SAMPLES)
    good = [r for r in records if "error" not in r]
    assert len(good) == len(GOOD_SAMPLES) and all(set(r) == {"path", "error"} for r in records if "error" in r)
    for record in good:
        [person] = record["people"]
        assert set(person) == {"box", "score", "keypoints"} and set(record) == {"path", "width", "height", "people",
                                                                                 "output"}
        assert [k["name"] for k in person["keypoints"]] == list(COCO_KEYPOINTS)
        drawn = Image.open(record["output"])
        assert drawn.size == (record["width"], record["height"])
        mirrored = tmp_path / "drawn" / "@root" / Path(record["path"]).relative_to("/")  # absolute inputs: files.py's rule
        assert record["output"] == f"{mirrored}.pose.jpg"
    coco = json.loads((tmp_path / "k.json").read_text())
    assert [i["file_name"] for i in coco["images"]] == [r["path"] for r in good]
    assert coco["categories"][0]["keypoints"] == list(COCO_KEYPOINTS) and len(coco["categories"][0]["skeleton"]) == 19
    assert len(coco["annotations"]) == len(good)
    for annotation, record in zip(coco["annotations"], good):
        assert annotation["category_id"] == 1 and len(annotation["keypoints"]) == 3 * 17
        assert annotation["keypoints"][0:2] == [record["people"][0]["keypoints"][0][k] for k in ("x", "y")]


def test_coco_boxes_file_by_file_name_and_unmatched_inputs(tiny_vitpose_dir: Path, two_images: list[Path],
                                                           tmp_path: Path) -> None:
    coco = {"images": [{"id": 7, "file_name": two_images[1].name, "width": 300, "height": 451}],
            "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "bicycle"}],
            "annotations": [{"image_id": 7, "category_id": 1, "bbox": [10, 10, 100, 200], "iscrowd": 0},
                            {"image_id": 7, "category_id": 1, "bbox": [0, 0, 300, 451], "iscrowd": 1},
                            {"image_id": 7, "category_id": 2, "bbox": [5, 5, 50, 50], "iscrowd": 0}]}
    (tmp_path / "gt.json").write_text(json.dumps(coco))
    records = [r.to_dict() for r in vitkit.pose([str(p) for p in two_images], model=str(tiny_vitpose_dir),
                                                device="cpu", workers=0, boxes_from=str(tmp_path / "gt.json"))]
    assert records[0] == {"path": str(two_images[0]), "error": "not in the --boxes-from file"}
    assert [(p["box"], p["score"]) for p in records[1]["people"]] == [([10.0, 10.0, 110.0, 210.0], None)]


def test_bad_options_fail_before_any_model_loads(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="two sources"):
        vitkit.pose(str(tmp_path), boxes_from="x.json", whole_image=True)
    with pytest.raises(UsageError, match="not a probability"):
        vitkit.pose(str(tmp_path), person_threshold=1.5)
    (tmp_path / "results.json").write_text("[]")
    with pytest.raises(UsageError, match="names images by id only"):
        vitkit.pose(str(tmp_path), boxes_from=str(tmp_path / "results.json"))


def test_mixture_of_experts_backbone_uses_its_coco_expert(two_images: list[Path], tmp_path: Path) -> None:
    """ViTPose+ needs `dataset_index`: every crop goes to expert 0 (COCO), as transformers' own call with it."""
    from transformers import VitPoseBackboneConfig, VitPoseConfig, VitPoseForPoseEstimation, VitPoseImageProcessor

    torch.manual_seed(1)
    backbone = VitPoseBackboneConfig(image_size=[64, 48], patch_size=[16, 16], hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, mlp_ratio=2, out_indices=[2], num_experts=2, part_features=8)
    model = VitPoseForPoseEstimation(VitPoseConfig(backbone_config=backbone, id2label=dict(enumerate(COCO_KEYPOINTS))))
    model.save_pretrained(tmp_path / "moe")
    processor = VitPoseImageProcessor(size={"height": 64, "width": 48})
    processor.save_pretrained(tmp_path / "moe")
    [record] = vitkit.pose(str(two_images[0]), model=str(tmp_path / "moe"), whole_image=True, device="cpu", workers=0)
    image = Image.open(two_images[0]).convert("RGB")
    boxes = [[[0, 0, image.width, image.height]]]
    with torch.no_grad():
        outputs = model.eval()(**processor(images=image, boxes=boxes, return_tensors="pt"),
                               dataset_index=torch.tensor([0]))
    [[expected]] = processor.post_process_pose_estimation(outputs, boxes=boxes)
    got = torch.tensor([[k.x, k.y] for k in record.people[0].keypoints])
    assert (got - expected["keypoints"]).abs().max().item() < TOLERANCE_PX


def test_kpt_threshold_changes_drawings_only(tiny_vitpose_dir: Path, two_images: list[Path], tmp_path: Path) -> None:
    def run(threshold: float, out: str) -> tuple[list[dict], bytes]:
        [record] = vitkit.pose(str(two_images[1]), model=str(tiny_vitpose_dir), whole_image=True, device="cpu",
                               workers=0, kpt_threshold=threshold, out_dir=str(tmp_path / out))
        fields = record.to_dict()
        return fields["people"], Image.open(fields["output"]).tobytes()

    every_point, with_points = run(0.0, "all")
    none, without_points = run(1.0, "none")
    assert every_point == none and len(none[0]["keypoints"]) == 17
    assert with_points != without_points


def test_boxes_file_name_matching_rules(tmp_path: Path) -> None:
    from vitkit.tasks.pose_boxes import PersonBox, Unmatched, match_boxes

    one = [PersonBox((0, 0, 1, 1), None)]
    found = {"val/0001.jpg": one, "0002.jpg": [], "a/0003.jpg": one, "b/0003.jpg": one, "ab/0004.jpg": one}
    matched = match_boxes(found, ["data/val/0001.jpg", "x/0002.jpg", "c/0003.jpg", "b/0003.jpg", "b/0004.jpg",
                                  "xval/0001.jpg"])
    assert matched["data/val/0001.jpg"] == one and matched["x/0002.jpg"] == []
    assert matched["b/0003.jpg"] == one  # the exact name wins over the two suffix matches
    assert isinstance(matched["c/0003.jpg"], Unmatched)  # two entries end at 0003.jpg, neither at c/
    assert isinstance(matched["b/0004.jpg"], Unmatched)  # ab/0004.jpg does not end b/0004.jpg at a folder
    assert isinstance(matched["xval/0001.jpg"], Unmatched)


def test_a_detector_without_the_person_class_is_refused(tiny_vitpose_dir: Path, tiny_detr_dir: Path) -> None:
    with pytest.raises(UsageError, match="has no class 'person'"):
        vitkit.pose(str(SAMPLE_DATA / "chelsea.jpg"), model=str(tiny_vitpose_dir), detector=str(tiny_detr_dir), device="cpu")


def test_boxes_without_area_are_skipped_and_a_broken_coco_file_is_a_usage_error(tiny_vitpose_dir: Path,
                                                                               tmp_path: Path) -> None:
    """A zero-width box (detect clips one outside the image to nothing) would make the processor's crop
    NaN and stop the run; it holds no person, so it is skipped. A COCO file naming an image it does not
    list is refused with its reason, not a traceback."""
    photo = str(SAMPLE_DATA / "chelsea.jpg")
    records = tmp_path / "boxes.jsonl"
    records.write_text(json.dumps({"path": photo, "width": 451, "height": 300, "detections": [
        {"label": "person", "class_id": 1, "score": 0.99, "box": [10.0, 10.0, 10.0, 200.0]},
        {"label": "person", "class_id": 1, "score": 0.98, "box": [20.0, 30.0, 220.0, 290.0]}]}) + "\n")
    [record] = list(vitkit.pose(photo, model=str(tiny_vitpose_dir), boxes_from=str(records), device="cpu"))
    assert record.ok and [p.box for p in record.people] == [[20.0, 30.0, 220.0, 290.0]]
    broken = tmp_path / "coco.json"
    broken.write_text(json.dumps({"images": [{"id": 1, "file_name": photo}], "categories": [{"id": 1, "name": "person"}],
                                  "annotations": [{"image_id": 7, "category_id": 1, "bbox": [0, 0, 5, 5]}]}))
    with pytest.raises(UsageError, match="not a well-formed COCO file"):
        list(vitkit.pose(photo, model=str(tiny_vitpose_dir), boxes_from=str(broken), device="cpu"))
