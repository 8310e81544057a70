"""COCO-style box detection evaluation in numpy: mAP@[.5:.95], AP50, AP75 and per-category AP.

Implemented as pycocotools' ``COCOeval`` does it for ``iouType="bbox"``, area range "all" and ``maxDets=100``:

- IoU thresholds ``.50:.05:.95`` and recall points ``0:.01:1`` are built with the same ``np.linspace`` calls,
  so values sitting on a threshold fall on the same side. Box areas are ``w * h`` (no ``+1``).
- Per image and category, detections are sorted by score (stable, so input order breaks ties) and only the
  best ``max_detections`` are kept. Like pycocotools, the cap is per image *and category*, not per image.
- Greedy matching, highest score first: a detection takes the unmatched non-crowd ground truth with the highest
  IoU >= threshold (equal IoUs go to the later annotation, as in pycocotools). Failing that, a detection whose
  IoU with a crowd region is >= threshold is ignored (neither TP nor FP); crowd IoU divides by the detection's
  area. Crowd regions can absorb any number of detections. Anything else is a false positive, including
  detections on images with no ground truth and detections of a category the image does not have.
- Per category, detections from all images are merged by score (stable, in image-id order), precision is made
  monotone (running max from the right) and read at the 101 recall points; points beyond the last recall
  reached count as 0. A category with ground truth but no detections has AP 0.
- Categories with no non-crowd ground truth are left out of the means and of ``per_category_ap``
  (pycocotools marks them -1).

Not implemented: area ranges (small / medium / large are not reported, and the "all" range's bounds of 0 and
1e10 px² are not applied), maxDets 1 and 10, average recall (AR), ``useCats=0`` and segmentation or keypoint
IoU. The annotation's ``area`` field is therefore not read. One deliberate difference: detections naming an
image or category absent from the ground truth raise ``UsageError`` rather than being dropped (categories)
or asserted on (images).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vitkit.errors import UsageError

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels

# The same calls as pycocotools' Params, so float rounding of e.g. 0.9 matches theirs exactly.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)  # (T,) = (10,)
RECALL_POINTS = np.linspace(0.0, 1.0, int(np.round((1.0 - 0.0) / 0.01)) + 1, endpoint=True)  # (R,) = (101,)
_AP50, _AP75 = 0, 5  # indices into IOU_THRESHOLDS

_COCO_HINT = "--coco-gt wants a COCO instances JSON (images, annotations with bbox [x, y, w, h], categories)"


@dataclass(frozen=True)
class GroundTruth:
    images: dict[int, str]  # image id -> file_name (relative to the images dir)
    categories: dict[int, str]  # category id -> name
    # image id -> [(category_id, (x0, y0, x1, y1), iscrowd)], in annotation order; every image has an entry
    boxes: dict[int, list[tuple[int, Box, bool]]]


@dataclass(frozen=True)
class Detection:
    image_id: int
    category_id: int
    score: float
    box: Box  # x0, y0, x1, y1 pixels


@dataclass(frozen=True)
class DetectionMetrics:
    ap: float  # mAP@[.50:.05:.95], COCO 101-point interpolated, averaged over categories that have ground truth
    ap50: float
    ap75: float
    per_category_ap: dict[str, float]  # name -> AP@[.5:.95], only categories with non-crowd ground truth
    num_images: int  # images in the ground truth, with or without detections
    num_detections: int  # detections scored, i.e. after the max_detections cap


@dataclass(frozen=True)
class _GtGroup:
    boxes: np.ndarray  # (G, 4) xyxy, annotation order
    crowd: np.ndarray  # (G,) bool


@dataclass(frozen=True)
class _DetGroup:
    scores: np.ndarray  # (D,) descending
    boxes: np.ndarray  # (D, 4) xyxy, same order as scores


# --- loading -------------------------------------------------------------------------------------------------

def load_coco_ground_truth(path: str | Path) -> GroundTruth:
    """Read a COCO instances JSON; bboxes [x, y, w, h] become (x0, y0, x1, y1)."""
    path = Path(path)
    document = _read_json(path)
    for key in ("images", "annotations", "categories"):
        if not isinstance(document.get(key), list):
            raise UsageError(f"{path}: no '{key}' list", hint=_COCO_HINT)
    images = _parse_images(document["images"], path)
    categories = _parse_categories(document["categories"], path)
    boxes = _parse_annotations(document["annotations"], images, categories, path)
    return GroundTruth(images, categories, boxes)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as stream:
            document = json.load(stream)
    except OSError as exc:
        raise UsageError(f"cannot read ground truth {path}: {exc.strerror or exc}",
                         hint="check the --coco-gt path") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path} is not valid JSON: {exc}", hint=_COCO_HINT) from exc
    if not isinstance(document, dict):
        raise UsageError(f"{path}: expected a JSON object at the top level", hint=_COCO_HINT)
    return document


def _field(entry: Any, key: str, kind: type, where: str, path: Path) -> Any:
    if not isinstance(entry, dict) or key not in entry:
        raise UsageError(f"{path}: {where} has no '{key}'", hint=_COCO_HINT)
    value = entry[key]
    # bool is an int subclass; `"id": true` is a broken file, not id 1.
    if not isinstance(value, kind) or isinstance(value, bool):
        raise UsageError(f"{path}: {where}.{key} should be {kind.__name__}, not {value!r}", hint=_COCO_HINT)
    return value


def _parse_images(entries: list[Any], path: Path) -> dict[int, str]:
    images: dict[int, str] = {}
    for n, entry in enumerate(entries):
        image_id = _field(entry, "id", int, f"images[{n}]", path)
        if image_id in images:
            raise UsageError(f"{path}: images[{n}] repeats image id {image_id}", hint=_COCO_HINT)
        images[image_id] = _field(entry, "file_name", str, f"images[{n}]", path)
    return images


def _parse_categories(entries: list[Any], path: Path) -> dict[int, str]:
    categories: dict[int, str] = {}
    for n, entry in enumerate(entries):
        category_id = _field(entry, "id", int, f"categories[{n}]", path)
        name = _field(entry, "name", str, f"categories[{n}]", path)
        # Names key per_category_ap and the model-label mapping, so a repeat would silently merge two classes.
        if category_id in categories or name in categories.values():
            raise UsageError(f"{path}: categories[{n}] repeats id {category_id} or name {name!r}",
                             hint=_COCO_HINT)
        categories[category_id] = name
    return categories


def _parse_annotations(entries: list[Any], images: dict[int, str], categories: dict[int, str],
                       path: Path) -> dict[int, list[tuple[int, Box, bool]]]:
    boxes: dict[int, list[tuple[int, Box, bool]]] = {image_id: [] for image_id in images}
    for n, entry in enumerate(entries):
        where = f"annotations[{n}]"
        image_id = _field(entry, "image_id", int, where, path)
        category_id = _field(entry, "category_id", int, where, path)
        if image_id not in images or category_id not in categories:
            raise UsageError(f"{path}: {where} refers to image {image_id} / category {category_id}, "
                             "which the file does not list", hint=_COCO_HINT)
        box = _parse_bbox(_field(entry, "bbox", list, where, path), where, path)
        boxes[image_id].append((category_id, box, bool(entry.get("iscrowd", 0))))
    return boxes


def _parse_bbox(bbox: list[Any], where: str, path: Path) -> Box:
    numbers = [v for v in bbox if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(bbox) != 4 or len(numbers) != 4 or not np.isfinite(numbers).all() or min(numbers[2:]) < 0:
        raise UsageError(f"{path}: {where}.bbox should be [x, y, width, height] with width, height >= 0, "
                         f"not {bbox!r}", hint=_COCO_HINT)
    x, y, w, h = (float(v) for v in numbers)
    return (x, y, x + w, y + h)


# --- IoU and matching ----------------------------------------------------------------------------------------

def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes: (N, 4) x (M, 4) -> (N, M). Areas are w * h; empty unions give 0."""
    inter, area_a, area_b = _intersections(a, b)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _intersections(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])  # (N, M, 2)
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])  # (N, M, 2)
    inter = np.clip(bottom_right - top_left, 0, None).prod(axis=2)  # (N, M)
    return inter, _areas(a), _areas(b)


def _areas(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _match_iou(det_boxes: np.ndarray, gt: _GtGroup) -> np.ndarray:
    """(D, G) IoU where crowd columns use the detection's area as the denominator, as COCO does."""
    inter, det_area, gt_area = _intersections(det_boxes, gt.boxes)
    union = np.where(gt.crowd[None, :], det_area[:, None], det_area[:, None] + gt_area[None, :] - inter)
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _match_image(gt: _GtGroup, det_boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COCO's greedy matching for one image and category at every threshold: (T, D) matched, (T, D) ignored."""
    num_gt = len(gt.boxes)
    matched = np.zeros((len(IOU_THRESHOLDS), len(det_boxes)), dtype=bool)
    ignored = np.zeros_like(matched)
    if num_gt == 0 or len(det_boxes) == 0:
        return matched, ignored
    ious = _match_iou(det_boxes, gt)  # (D, G)
    taken = np.zeros((len(IOU_THRESHOLDS), num_gt), dtype=bool)  # (T, G) non-crowd GT already matched
    for d in range(len(det_boxes)):  # detections are in score order, so the loop order is the greedy order
        passes = ious[d][None, :] >= IOU_THRESHOLDS[:, None]  # (T, G)
        free = passes & ~gt.crowd & ~taken
        hit = free.any(axis=1)  # (T,)
        # argmax over reversed columns: pycocotools gives equal IoUs to the later annotation.
        best = num_gt - 1 - np.argmax(np.where(free, ious[d], -1.0)[:, ::-1], axis=1)
        taken[np.flatnonzero(hit), best[hit]] = True
        matched[:, d] = hit
        # A real match wins over a crowd region even when the crowd IoU is higher.
        ignored[:, d] = ~hit & (passes & gt.crowd).any(axis=1)
    return matched, ignored


# --- accumulation --------------------------------------------------------------------------------------------

def _interpolated_precision(matched: np.ndarray, ignored: np.ndarray, num_gt: int) -> np.ndarray:
    """(T, D) flags in global score order -> (T, R) precision at the 101 recall points."""
    tp = np.cumsum(matched & ~ignored, axis=1)
    fp = np.cumsum(~matched & ~ignored, axis=1)
    recall = tp / num_gt
    counted = tp + fp
    # Leading ignored detections have no precision yet; 0 is safe since the envelope below lifts them.
    precision = np.divide(tp, counted, out=np.zeros(tp.shape), where=counted > 0)
    precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    sampled = np.zeros((len(IOU_THRESHOLDS), len(RECALL_POINTS)))
    for t in range(len(IOU_THRESHOLDS)):
        index = np.searchsorted(recall[t], RECALL_POINTS, side="left")
        reached = index < recall.shape[1]
        sampled[t, reached] = precision[t, index[reached]]
    return sampled


def _category_precision(gt_groups: dict[tuple[int, int], _GtGroup], det_groups: dict[tuple[int, int], _DetGroup],
                        image_ids: list[int], category_id: int) -> np.ndarray | None:
    """(T, R) precision for one category, or None when it has no non-crowd ground truth (COCO's -1)."""
    no_gt = _GtGroup(np.zeros((0, 4)), np.zeros(0, dtype=bool))
    num_gt, scores, matched, ignored = 0, [], [], []
    for image_id in image_ids:
        gt = gt_groups.get((image_id, category_id), no_gt)
        num_gt += int(np.count_nonzero(~gt.crowd))
        dets = det_groups.get((image_id, category_id))
        if dets is None:
            continue
        image_matched, image_ignored = _match_image(gt, dets.boxes)
        scores.append(dets.scores)
        matched.append(image_matched)
        ignored.append(image_ignored)
    if num_gt == 0:
        return None
    if not scores:
        return np.zeros((len(IOU_THRESHOLDS), len(RECALL_POINTS)))
    # Stable, over images concatenated in id order: the tie order pycocotools uses.
    order = np.argsort(-np.concatenate(scores), kind="mergesort")
    return _interpolated_precision(np.concatenate(matched, axis=1)[:, order],
                                   np.concatenate(ignored, axis=1)[:, order], num_gt)


def _group_ground_truth(ground_truth: GroundTruth) -> dict[tuple[int, int], _GtGroup]:
    grouped: dict[tuple[int, int], list[tuple[Box, bool]]] = defaultdict(list)
    for image_id, entries in ground_truth.boxes.items():
        for category_id, box, crowd in entries:
            grouped[image_id, category_id].append((box, crowd))
    return {key: _GtGroup(np.array([box for box, _ in rows], dtype=np.float64).reshape(-1, 4),
                          np.array([crowd for _, crowd in rows], dtype=bool))
            for key, rows in grouped.items()}


def _group_detections(ground_truth: GroundTruth, detections: Sequence[Detection],
                      max_detections: int) -> dict[tuple[int, int], _DetGroup]:
    grouped: dict[tuple[int, int], list[Detection]] = defaultdict(list)
    for detection in detections:
        _check_detection(ground_truth, detection)
        grouped[detection.image_id, detection.category_id].append(detection)
    result = {}
    for key, group in grouped.items():
        scores = np.array([d.score for d in group], dtype=np.float64)
        keep = np.argsort(-scores, kind="mergesort")[:max_detections]  # stable: input order breaks ties
        boxes = np.array([d.box for d in group], dtype=np.float64).reshape(-1, 4)
        result[key] = _DetGroup(scores[keep], boxes[keep])
    return result


def _check_detection(ground_truth: GroundTruth, detection: Detection) -> None:
    if detection.image_id not in ground_truth.images or detection.category_id not in ground_truth.categories:
        raise UsageError(f"detection on image {detection.image_id}, category {detection.category_id}: "
                         "not in the ground truth", hint="map model labels to ground-truth category ids first")
    x0, y0, x1, y1 = detection.box
    if not np.isfinite([detection.score, x0, y0, x1, y1]).all() or x1 < x0 or y1 < y0:
        raise UsageError(f"detection on image {detection.image_id} has score {detection.score} and box "
                         f"{detection.box}; want a finite score and x0 <= x1, y0 <= y1")


def evaluate_detections(ground_truth: GroundTruth, detections: Sequence[Detection],
                        max_detections: int = 100) -> DetectionMetrics:
    """COCO bbox mAP@[.5:.95], AP50 and AP75 of `detections` against `ground_truth` (see the module docstring)."""
    if max_detections < 1:
        raise UsageError(f"max_detections must be at least 1, not {max_detections}")
    gt_groups = _group_ground_truth(ground_truth)
    det_groups = _group_detections(ground_truth, detections, max_detections)
    image_ids = sorted(ground_truth.images)
    tables, per_category_ap = [], {}
    for category_id in sorted(ground_truth.categories):
        precision = _category_precision(gt_groups, det_groups, image_ids, category_id)  # (T, R) or None
        if precision is not None:
            tables.append(precision)
            per_category_ap[ground_truth.categories[category_id]] = float(precision.mean())
    if not tables:
        raise UsageError("the ground truth has no (non-crowd) boxes, so AP is undefined",
                         hint="check that the annotations list is not empty")
    stacked = np.stack(tables)  # (K, T, R)
    return DetectionMetrics(
        ap=float(stacked.mean()), ap50=float(stacked[:, _AP50].mean()), ap75=float(stacked[:, _AP75].mean()),
        per_category_ap=per_category_ap, num_images=len(ground_truth.images),
        num_detections=sum(len(group.scores) for group in det_groups.values()),
    )
