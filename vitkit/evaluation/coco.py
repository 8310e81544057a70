"""COCO-format export of detections: images, categories and annotations (with scores) in one JSON file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from vitkit.outputs.rle import mask_area
from vitkit.outputs.writers import open_output


class CocoResultsSink:
    """Collects detect records during a run; writes the file (atomically) when closed."""

    def __init__(self, path: str, id2label: Mapping[int, str]) -> None:
        self.path = path
        self.categories = [{"id": int(i), "name": name} for i, name in sorted(id2label.items())]
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []

    def add(self, record: dict[str, Any]) -> None:
        if "error" in record:
            return
        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "file_name": record["path"], "width": record["width"],
                            "height": record["height"]})
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

    def close(self) -> None:
        document = {"info": {"description": "vitkit detect"}, "images": self.images,
                    "categories": self.categories, "annotations": self.annotations}
        with open_output(str(Path(self.path))) as stream:
            json.dump(document, stream, ensure_ascii=False)
