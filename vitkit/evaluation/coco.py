"""COCO-format export of detections and of poses: images, categories and annotations (with scores) in one JSON file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from vitkit.outputs.rle import mask_area
from vitkit.outputs.writers import open_output


class _CocoSink:
    """One COCO document built from a run's records: an image entry per successful record, numbered in
    record order, and the annotations a subclass makes of it; written atomically when closed."""

    description = "vitkit"

    def __init__(self, path: str, categories: list[dict[str, Any]]) -> None:
        self.path, self.categories = path, categories
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []

    def add(self, record: dict[str, Any]) -> None:
        if "error" in record:
            return
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "file_name": record["path"], "width": record["width"],
                            "height": record["height"]})
        self.annotate(record, image_id)

    def annotate(self, record: dict[str, Any], image_id: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        document = {"info": {"description": self.description}, "images": self.images,
                    "categories": self.categories, "annotations": self.annotations}
        with open_output(str(Path(self.path))) as stream:
            json.dump(document, stream, ensure_ascii=False)


class CocoResultsSink(_CocoSink):
    """detect's records as COCO results: one annotation per detection (with its mask's RLE under --masks)."""

    description = "vitkit detect"

    def __init__(self, path: str, id2label: Mapping[int, str]) -> None:
        super().__init__(path, [{"id": int(i), "name": name} for i, name in sorted(id2label.items())])

    def annotate(self, record: dict[str, Any], image_id: int) -> None:
        for detection in record.get("detections", []):
            x0, y0, x1, y1 = detection["box"]
            annotation = {
                "id": len(self.annotations) + 1, "image_id": image_id, "category_id": detection["class_id"],
                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0,
                "score": detection["score"],
            }
            if "mask" in detection:  # detect --masks: COCO compressed RLE, its area the mask's pixels
                annotation.update(segmentation=detection["mask"], area=mask_area(detection["mask"]))
            self.annotations.append(annotation)


# Keypoints scoring at least this count towards a person's COCO score (mmpose's and ViTPose's evaluation rule).
KEYPOINT_SCORE_FLOOR = 0.2


class CocoKeypointsSink(_CocoSink):
    """Collects pose records; writes a COCO keypoints file (images, the person category with its keypoint
    names and skeleton, one annotation per person) when closed. Each keypoint is `x, y, v` with v = 2
    at or above `kpt_threshold` and 1 below (COCO's evaluation reads no visibility from results)."""

    description = "vitkit pose"

    def __init__(self, path: str, names: Sequence[str], skeleton: Sequence[tuple[int, int]], kpt_threshold: float) -> None:
        super().__init__(path, [{"id": 1, "name": "person", "supercategory": "person", "keypoints": list(names),
                                 "skeleton": [[a + 1, b + 1] for a, b in skeleton]}])  # COCO's are 1-based
        self.kpt_threshold = kpt_threshold

    def annotate(self, record: dict[str, Any], image_id: int) -> None:
        for person in record.get("people", []):
            self.annotations.append(self._annotation(person, image_id))

    def _annotation(self, person: dict[str, Any], image_id: int) -> dict[str, Any]:
        """score: the box's score (1 when given without one) times the mean of its keypoint scores at or
        above KEYPOINT_SCORE_FLOOR, as ViTPose's COCO evaluation rescored people."""
        x0, y0, x1, y1 = person["box"]
        flat: list[float] = []
        for keypoint in person["keypoints"]:
            flat += [keypoint["x"], keypoint["y"], 2 if keypoint["score"] >= self.kpt_threshold else 1]
        confident = [k["score"] for k in person["keypoints"] if k["score"] >= KEYPOINT_SCORE_FLOOR]
        box_score = 1.0 if person["score"] is None else person["score"]
        return {"id": len(self.annotations) + 1, "image_id": image_id, "category_id": 1, "keypoints": flat,
                "num_keypoints": sum(1 for v in flat[2::3] if v == 2), "bbox": [x0, y0, x1 - x0, y1 - y0],
                "area": (x1 - x0) * (y1 - y0), "iscrowd": 0,
                "score": box_score * (sum(confident) / len(confident) if confident else 0.0)}
