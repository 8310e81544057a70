"""COCO-style detection evaluation: hand-computed APs, matching rules, the loader, and parity with pycocotools."""

from __future__ import annotations

import contextlib
import io
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from vitkit.errors import UsageError
from vitkit.evaluation.metrics import (
    Detection,
    GroundTruth,
    box_iou,
    evaluate_detections,
    load_coco_ground_truth,
)

SQUARE = (0.0, 0.0, 10.0, 10.0)
FAR_AWAY = (100.0, 100.0, 110.0, 110.0)


def ground_truth(boxes: dict[int, list[tuple[int, tuple[float, float, float, float], bool]]],
                 categories: dict[int, str] | None = None) -> GroundTruth:
    return GroundTruth(images={i: f"{i}.jpg" for i in boxes}, categories=categories or {1: "cat"}, boxes=boxes)


def test_perfect_detections_score_one() -> None:
    boxes = {
        1: [(1, (0, 0, 10, 10), False), (2, (5, 5, 30, 40), False)],
        2: [(1, (10, 10, 20, 25), False), (1, (12, 11, 22, 27), False), (3, (0, 0, 100, 50), False)],
        3: [(2, (1.5, 2.5, 7.25, 9.0), False)],
        4: [],
    }
    gt = ground_truth(boxes, {1: "cat", 2: "dog", 3: "bird"})
    detections = [Detection(i, c, 1.0, box) for i, rows in boxes.items() for c, box, _ in rows]
    metrics = evaluate_detections(gt, detections)
    assert (metrics.ap, metrics.ap50, metrics.ap75) == (1.0, 1.0, 1.0)
    assert metrics.per_category_ap == {"cat": 1.0, "dog": 1.0, "bird": 1.0}
    assert (metrics.num_images, metrics.num_detections) == (4, 6)


def test_hand_computed_ap() -> None:
    # One category, 2 GT squares, 3 detections by score:
    #   0.9  exact copy of GT A           IoU 1.00  -> TP at every threshold
    #   0.8  nowhere near any GT          IoU 0     -> FP
    #   0.7  GT B cut to 10 x 7.2         IoU 0.72  -> TP at .50 .55 .60 .65 .70, FP at .75 ... .95
    #
    # Thresholds .50-.70 (5 of them): TP FP TP -> precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1;
    #   monotone envelope 1, 2/3, 2/3. Recall points 0, .01, ..., .50 (51 points) read 1, the 50 points
    #   .51 ... 1.00 read 2/3: AP = (51 + 50 * 2/3) / 101 = 253/303.
    # Thresholds .75-.95 (5 of them): TP FP FP -> precision 1, 1/2, 1/3, recall stays 1/2;
    #   51 points read 1, the 50 beyond recall 1/2 read 0: AP = 51/101 = 153/303.
    # mAP = (5 * 253/303 + 5 * 153/303) / 10 = 406/606 = 203/303; AP50 = 253/303; AP75 = 153/303.
    gt = ground_truth({1: [(1, SQUARE, False), (1, (20, 0, 30, 10), False)]})
    detections = [Detection(1, 1, 0.9, SQUARE), Detection(1, 1, 0.8, FAR_AWAY),
                  Detection(1, 1, 0.7, (20, 0, 30, 7.2))]
    metrics = evaluate_detections(gt, detections)
    assert metrics.ap == pytest.approx(float(Fraction(203, 303)), abs=1e-9)
    assert metrics.ap50 == pytest.approx(float(Fraction(253, 303)), abs=1e-9)
    assert metrics.ap75 == pytest.approx(float(Fraction(153, 303)), abs=1e-9)
    assert metrics.per_category_ap == {"cat": pytest.approx(float(Fraction(203, 303)), abs=1e-9)}


@pytest.mark.parametrize(("height", "passed"), [(4.5, 0), (5.25, 1), (5.75, 2), (6.25, 3), (7.2, 5), (9.7, 10)])
def test_ap_counts_the_iou_thresholds_passed(height: float, passed: int) -> None:
    # A 10 x `height` box inside a 10 x 10 GT has IoU height/10; it is a TP (AP 1) at each threshold it
    # reaches and an FP (AP 0) above, so AP is the fraction of the 10 thresholds reached. Heights stay off
    # the thresholds themselves, where float rounding would decide.
    metrics = evaluate_detections(ground_truth({1: [(1, SQUARE, False)]}), [Detection(1, 1, 0.5, (0, 0, 10, height))])
    assert metrics.ap == pytest.approx(passed / 10, abs=1e-12)
    assert metrics.ap50 == (1.0 if passed >= 1 else 0.0)
    assert metrics.ap75 == (1.0 if passed >= 6 else 0.0)


def test_detections_on_crowd_regions_are_ignored() -> None:
    crowd = (0.0, 0.0, 100.0, 100.0)
    boxes = {1: [(1, (200, 200, 210, 210), False), (1, crowd, True)]}
    # 10 x 10 inside a 100 x 100 crowd: plain IoU 0.01, crowd IoU (over the detection's area) 1.
    in_crowd = [Detection(1, 1, 0.9, (10, 10, 20, 20)), Detection(1, 1, 0.8, (50, 50, 60, 60))]
    real = Detection(1, 1, 0.5, (200, 200, 210, 210))
    assert evaluate_detections(ground_truth(boxes), [*in_crowd, real]).ap == 1.0

    # Without the crowd flag the big box is a missed GT and both small boxes FPs above the TP:
    # precision 0, 0, 1/3 at recall 0, 0, 1/2 -> 51 points read 1/3 -> AP = 17/101.
    not_crowd = {1: [(1, (200, 200, 210, 210), False), (1, crowd, False)]}
    ap = evaluate_detections(ground_truth(not_crowd), [*in_crowd, real]).ap
    assert ap == pytest.approx(float(Fraction(51, 101) / 3), abs=1e-9)


def test_category_with_only_crowd_ground_truth_is_left_out() -> None:
    gt = ground_truth({1: [(1, SQUARE, False), (2, FAR_AWAY, True)]}, {1: "cat", 2: "people"})
    metrics = evaluate_detections(gt, [Detection(1, 1, 0.9, SQUARE), Detection(1, 2, 0.9, SQUARE)])
    assert metrics.per_category_ap == {"cat": 1.0}
    assert metrics.ap == 1.0


def test_detection_on_image_without_ground_truth_is_a_false_positive() -> None:
    # FP (0.9) then TP (0.5): precision 0, 1/2 at recall 0, 1 -> envelope 1/2 everywhere -> AP 1/2.
    gt = ground_truth({1: [(1, SQUARE, False)], 2: []})
    metrics = evaluate_detections(gt, [Detection(2, 1, 0.9, SQUARE), Detection(1, 1, 0.5, SQUARE)])
    assert metrics.ap == pytest.approx(0.5, abs=1e-12)


def test_wrong_category_is_a_false_positive() -> None:
    # "dog" gets an FP on image 1's cat (0.9) above its real TP on image 2 (0.5): AP 1/2, as above.
    gt = ground_truth({1: [(1, SQUARE, False)], 2: [(2, FAR_AWAY, False)]}, {1: "cat", 2: "dog"})
    detections = [Detection(1, 1, 0.6, SQUARE), Detection(1, 2, 0.9, SQUARE), Detection(2, 2, 0.5, FAR_AWAY)]
    metrics = evaluate_detections(gt, detections)
    assert metrics.per_category_ap == {"cat": 1.0, "dog": pytest.approx(0.5, abs=1e-12)}
    assert metrics.ap == pytest.approx(0.75, abs=1e-12)


def test_category_with_ground_truth_but_no_detections_scores_zero() -> None:
    gt = ground_truth({1: [(1, SQUARE, False), (2, FAR_AWAY, False)]}, {1: "cat", 2: "dog"})
    metrics = evaluate_detections(gt, [Detection(1, 1, 0.9, SQUARE)])
    assert metrics.per_category_ap == {"cat": 1.0, "dog": 0.0}
    assert metrics.ap == 0.5


def test_max_detections_keeps_the_best_per_image_and_category() -> None:
    squares = [(float(x), 0.0, x + 10.0, 10.0) for x in (0, 20, 40)]
    gt = ground_truth({1: [(1, box, False) for box in squares] + [(2, box, False) for box in squares[:2]]},
                      {1: "cat", 2: "dog"})
    cats = [Detection(1, 1, score, box) for score, box in zip((0.7, 0.9, 0.8), squares)]
    dogs = [Detection(1, 2, 0.5, box) for box in squares[:2]]
    metrics = evaluate_detections(gt, cats + dogs, max_detections=2)
    # The 0.7 cat is cut: recall tops out at 2/3, so recall points 0 ... .66 (67 of 101) read 1.
    # Like pycocotools the cap is per image *and category*, so both dogs stay.
    assert metrics.per_category_ap == {"cat": pytest.approx(67 / 101, abs=1e-12), "dog": 1.0}
    assert metrics.num_detections == 4
    assert evaluate_detections(gt, cats + dogs).ap == 1.0


def test_unknown_image_or_category_in_detections_is_a_usage_error() -> None:
    gt = ground_truth({1: [(1, SQUARE, False)]})
    with pytest.raises(UsageError, match="image 7"):
        evaluate_detections(gt, [Detection(7, 1, 0.9, SQUARE)])
    with pytest.raises(UsageError, match="category 3"):
        evaluate_detections(gt, [Detection(1, 3, 0.9, SQUARE)])
    with pytest.raises(UsageError, match="finite"):
        evaluate_detections(gt, [Detection(1, 1, float("nan"), SQUARE)])
    with pytest.raises(UsageError, match="no .*boxes"):
        evaluate_detections(ground_truth({1: []}), [])


def test_box_iou_hand_values() -> None:
    a = np.array([[0, 0, 2, 2], [0, 0, 4, 4]], dtype=float)
    b = np.array([[1, 1, 3, 3], [0, 0, 2, 2], [2, 2, 4, 4], [0, 0, 1, 2], [5, 5, 5, 5]], dtype=float)
    expected = np.array([
        [1 / 7, 1.0, 0.0, 0.5, 0.0],  # 1/(4+4-1); identical; touching corner; half; zero-area far away
        [4 / 16, 4 / 16, 4 / 16, 2 / 16, 0.0],
    ])
    np.testing.assert_allclose(box_iou(a, b), expected, rtol=0, atol=1e-15)
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 5)
    assert box_iou(np.array([[3, 3, 3, 3]]), np.array([[3, 3, 3, 3]]))[0, 0] == 0.0  # empty union, not NaN


def write_coco(path: Path, annotations: list[dict], images: int = 2) -> Path:
    path.write_text(json.dumps({
        "images": [{"id": i, "file_name": f"img{i}.jpg", "width": 100, "height": 100} for i in range(1, images + 1)],
        "annotations": annotations,
        "categories": [{"id": 3, "name": "cat"}, {"id": 5, "name": "dog"}],
    }))
    return path


def test_load_coco_ground_truth_converts_xywh(tmp_path: Path) -> None:
    path = write_coco(tmp_path / "gt.json", [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 20, 30, 40], "area": 1200},
        {"id": 2, "image_id": 1, "category_id": 5, "bbox": [0.5, 1.5, 2, 3], "area": 6, "iscrowd": 1},
    ])
    gt = load_coco_ground_truth(str(path))
    assert gt.images == {1: "img1.jpg", 2: "img2.jpg"}
    assert gt.categories == {3: "cat", 5: "dog"}
    assert gt.boxes == {1: [(3, (10.0, 20.0, 40.0, 60.0), False), (5, (0.5, 1.5, 2.5, 4.5), True)], 2: []}


@pytest.mark.parametrize(("content", "complaint"), [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "top level"),
    (json.dumps({"images": [], "categories": []}), "'annotations'"),
    (json.dumps({"images": [{"id": 1}], "annotations": [], "categories": []}), "'file_name'"),
    (json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}], "categories": [{"id": 1, "name": "a"}],
                 "annotations": [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1]}]}), "bbox"),
    (json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}], "categories": [{"id": 1, "name": "a"}],
                 "annotations": [{"image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1]}]}), "image 2"),
])
def test_invalid_ground_truth_is_a_usage_error_naming_the_file(tmp_path: Path, content: str, complaint: str) -> None:
    path = tmp_path / "broken-gt.json"
    path.write_text(content)
    with pytest.raises(UsageError, match=complaint) as caught:
        load_coco_ground_truth(path)
    assert "broken-gt.json" in caught.value.message and caught.value.hint


def test_missing_ground_truth_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="missing-gt.json"):
        load_coco_ground_truth(tmp_path / "missing-gt.json")


# --- parity with pycocotools ---------------------------------------------------------------------------------

def random_case(seed: int) -> tuple[dict, list[dict]]:
    """COCO GT and results (xywh) for 20 images x 3 categories: jittered hits, misses, FPs, crowds, tied scores."""
    rng = np.random.default_rng(seed)
    images, annotations, results = [], [], []
    for image_id in range(1, 21):
        images.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": 640, "height": 480})
        for category_id in (1, 2, 3):
            for _ in range(rng.integers(0, 5)):
                x, y, w, h = *rng.uniform(0, 400, 2), *rng.uniform(8, 150, 2)
                crowd = int(rng.random() < 0.08)
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category_id,
                                    "bbox": [x, y, w, h], "area": w * h, "iscrowd": crowd})
                for _ in range(rng.integers(0, 3)):  # 0 = a miss, 2 = a duplicate
                    jitter = rng.normal(0, 0.12, 4) * [w, h, w, h]
                    box = [x + jitter[0], y + jitter[1], max(w + jitter[2], 1.0), max(h + jitter[3], 1.0)]
                    results.append({"image_id": image_id, "category_id": category_id, "bbox": box,
                                    "score": round(float(rng.random()), 2)})  # 2 decimals: ties across images
            for _ in range(rng.integers(0, 3)):
                box = [*rng.uniform(0, 500, 2), *rng.uniform(5, 100, 2)]
                results.append({"image_id": image_id, "category_id": category_id, "bbox": box,
                                "score": round(float(rng.random()), 2)})
    categories = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "bird"}]
    return {"images": images, "annotations": annotations, "categories": categories}, results


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_parity_with_pycocotools(tmp_path: Path, seed: int) -> None:
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    document, results = random_case(seed)
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(document))
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco_gt = COCO(str(path))
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()

    detections = [Detection(r["image_id"], r["category_id"], r["score"],
                            (r["bbox"][0], r["bbox"][1], r["bbox"][0] + r["bbox"][2], r["bbox"][1] + r["bbox"][3]))
                  for r in results]
    metrics = evaluate_detections(load_coco_ground_truth(path), detections)
    np.testing.assert_allclose([metrics.ap, metrics.ap50, metrics.ap75], coco_eval.stats[:3], rtol=0, atol=1e-6)
    precision = coco_eval.eval["precision"][:, :, :, 0, 2]  # (T, R, K), area "all", maxDets 100
    for k, category in enumerate(document["categories"]):
        assert metrics.per_category_ap[category["name"]] == pytest.approx(precision[:, :, k].mean(), abs=1e-6)
