"""`vitkit eval detect` end to end: a detector scored against ground truth equal to its own predictions."""

from __future__ import annotations

import json
import re
from pathlib import Path

from typer.testing import CliRunner

from tests.conftest import SAMPLE_DATA, parse_jsonl
from vitkit.cli import app

runner = CliRunner()


def write_ground_truth(records: list[dict], path: Path, categories: list[str], shift: float = 0.0) -> None:
    images, annotations = [], []
    for image_id, record in enumerate(records, 1):
        images.append({"id": image_id, "file_name": Path(record["path"]).name,
                       "width": record["width"], "height": record["height"]})
        for d in record["detections"]:
            x0, y0, x1, y1 = d["box"]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": d["class_id"] + 1,
                                "bbox": [x0 + shift, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                                "iscrowd": 0})
    # Category ids deliberately differ from the model's class ids: matching goes by name.
    document = {"images": images, "annotations": annotations,
                "categories": [{"id": i + 1, "name": n} for i, n in enumerate(categories)]}
    path.write_text(json.dumps(document))


def test_ap_is_one_when_predictions_equal_ground_truth(tiny_detr_dir: Path, tmp_path: Path) -> None:
    photos = [str(SAMPLE_DATA / n) for n in ("chelsea.jpg", "coffee.jpg", "rocket.jpg")]
    detected = runner.invoke(app, ["detect", *photos, "--model", str(tiny_detr_dir), "--threshold", "0.001",
                                   "--max-detections", "100"])
    records = parse_jsonl(detected.stdout)
    assert sum(len(r["detections"]) for r in records) > 0
    gt = tmp_path / "gt.json"
    write_ground_truth(records, gt, ["cat", "dog", "rocket"])
    result = runner.invoke(app, ["eval", "detect", str(SAMPLE_DATA), "--coco-gt", str(gt),
                                 "--model", str(tiny_detr_dir), "--format", "json"])
    assert result.exit_code == 0, result.stderr
    [row] = json.loads(result.stdout)
    assert row["ap"] == 1.0 and row["ap50"] == 1.0 and row["images"] == 3

    shifted = tmp_path / "shifted.json"
    write_ground_truth(records, shifted, ["cat", "dog", "rocket"], shift=1e4)  # every box moved off target
    result = runner.invoke(app, ["eval", "detect", str(SAMPLE_DATA), "--coco-gt", str(shifted),
                                 "--model", str(tiny_detr_dir), "--format", "json"])
    assert json.loads(result.stdout)[0]["ap"] == 0.0


def test_missing_image_is_counted_not_fatal(tiny_detr_dir: Path, tmp_path: Path) -> None:
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"images": [{"id": 1, "file_name": "nope.jpg", "width": 10, "height": 10},
                                         {"id": 2, "file_name": "chelsea.jpg", "width": 451, "height": 300}],
                              "annotations": [{"id": 1, "image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10],
                                               "area": 100, "iscrowd": 0}],
                              "categories": [{"id": 1, "name": "cat"}]}))
    result = runner.invoke(app, ["eval", "detect", str(SAMPLE_DATA), "--coco-gt", str(gt),
                                 "--model", str(tiny_detr_dir), "--format", "json"])
    assert result.exit_code == 1 and json.loads(result.stdout)[0]["failed"] == 1
    assert "nope.jpg" in result.stderr


def test_summary_for_people_and_full_precision_for_machines(tiny_detr_dir: Path, tmp_path: Path) -> None:
    """A terminal gets COCO-style lines and one row per category at 3 decimals; a ground-truth category the
    model has no label for is warned about (it scores AP 0); JSON keeps the unrounded numbers."""
    photos = [str(SAMPLE_DATA / n) for n in ("chelsea.jpg", "coffee.jpg", "rocket.jpg")]
    detected = runner.invoke(app, ["detect", *photos, "--model", str(tiny_detr_dir), "--threshold", "0.001",
                                   "--max-detections", "100"])
    records = parse_jsonl(detected.stdout)
    predicted = {d["label"] for r in records for d in r["detections"]}
    gt = tmp_path / "gt.json"
    write_ground_truth(records, gt, ["cat", "dog", "rocket"])
    document = json.loads(gt.read_text())
    document["categories"].append({"id": 99, "name": "unicorn"})
    document["annotations"].append({"id": 10_000, "image_id": 1, "category_id": 99, "bbox": [1, 1, 20, 20],
                                    "area": 400, "iscrowd": 0})
    gt.write_text(json.dumps(document))
    expected_ap = len(predicted) / (len(predicted) + 1)  # every predicted category 1.0, the unicorn 0.0

    args = ["eval", "detect", str(SAMPLE_DATA), "--coco-gt", str(gt), "--model", str(tiny_detr_dir)]
    table = runner.invoke(app, [*args, "--format", "table"])
    assert table.exit_code == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0] == f"Average Precision (AP) @[ IoU=0.50:0.95 | maxDets=100 ] = {expected_ap:.3f}"
    assert lines[1].startswith("Average Precision (AP) @[ IoU=0.50 ") and lines[2].startswith(
        "Average Precision (AP) @[ IoU=0.75 ")
    rows = {line.split()[0]: line.split()[1:] for line in lines[lines.index("") + 2:]}
    assert rows == {**{name: ["1.000"] for name in predicted}, "unicorn": ["0.000", "(model", "cannot", "predict", "it)"]}
    assert "{" not in table.stdout and not re.search(r"\d\.\d{4,}", table.stdout)  # no dict, no 17-digit floats
    assert all(len(line) <= 80 for line in lines)
    assert "1 ground-truth category the model cannot predict" in table.stderr and "unicorn" in table.stderr

    [row] = json.loads(runner.invoke(app, [*args, "--format", "json"]).stdout)
    assert row["ap"] == expected_ap  # the exact float, not rounded to 3 decimals
    assert row["per_category_ap"] == {**{name: 1.0 for name in predicted}, "unicorn": 0.0}
