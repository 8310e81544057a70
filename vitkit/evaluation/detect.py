"""Running a detector over a COCO ground-truth set and scoring it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

from vitkit.inputs.discover import InputItem
from vitkit.evaluation.metrics import Detection, DetectionMetrics, GroundTruth, evaluate_detections
from vitkit.runtime.report import Reporter
from vitkit.runtime.options import RunOptions
from vitkit.runtime.runner import run
from vitkit.tasks.detect import DetectTask


@dataclass(frozen=True)
class DetectorEvaluation:
    metrics: DetectionMetrics
    failed_images: int
    unmatched_labels: tuple[str, ...]  # model labels with no ground-truth category of that name or id
    # Ground-truth categories (with boxes) that no model label maps to: they score AP 0 and pull mAP down.
    unpredictable_categories: tuple[str, ...] = ()


def map_categories(id2label: Mapping[int, str], categories: Mapping[int, str]) -> dict[int, int]:
    """Model class id -> ground-truth category id: by name first (datasets renumber), then by id."""
    by_name = {name: cid for cid, name in categories.items()}
    mapping = {}
    for class_id, label in id2label.items():
        if label in by_name:
            mapping[class_id] = by_name[label]
        elif class_id in categories:
            mapping[class_id] = class_id
    return mapping


def evaluate_detector(task: DetectTask, ground_truth: GroundTruth, images_dir: str, options: RunOptions,
                      reporter: Reporter) -> DetectorEvaluation:
    image_ids = sorted(ground_truth.images)
    items = [InputItem(os.path.join(images_dir, ground_truth.images[i])) for i in image_ids]
    mapping = map_categories(task.id2label, ground_truth.categories)
    detections, failed = [], 0
    for image_id, record in zip(image_ids, run(task, items, options, reporter), strict=True):
        if not record.ok:
            failed += 1
            continue
        for found in record.fields["detections"]:
            if found["class_id"] in mapping:
                detections.append(Detection(image_id, mapping[found["class_id"]], found["score"], tuple(found["box"])))
    unmatched = tuple(sorted(label for cid, label in task.id2label.items() if cid not in mapping))
    metrics = evaluate_detections(ground_truth, detections)
    predictable = set(mapping.values())
    unpredictable = tuple(ground_truth.categories[cid] for cid in sorted(ground_truth.categories)
                          if cid not in predictable and ground_truth.categories[cid] in metrics.per_category_ap)
    return DetectorEvaluation(metrics, failed, unmatched, unpredictable)
