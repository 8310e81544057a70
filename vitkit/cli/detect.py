"""`vitkit detect`: DETR object detection, with annotated images and COCO export."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from vitkit.cli import options as o
from vitkit.cli.common import OutputOptions, collect_inputs, run_and_write
from vitkit.models.registry import DETECT, resolve

Threshold = Annotated[float, typer.Option("--threshold", min=0.0, max=1.0, help="Minimum detection score.")]
Classes = Annotated[Optional[str], typer.Option("--classes", help="Keep only these labels, comma-separated (e.g. 'person,dog').")]
MaxDetections = Annotated[Optional[int], typer.Option("--max-detections", min=1, help="Keep at most N boxes per image.")]
OutDir = Annotated[Optional[str], typer.Option("--out-dir", metavar="DIR", help="Write annotated images here, mirroring the input tree.")]
Coco = Annotated[Optional[str], typer.Option("--coco", metavar="FILE", help="Also write a COCO-format JSON (images, categories, scored annotations).")]


def detect(
    inputs: o.Inputs = None,
    threshold: Threshold = 0.7,
    classes: Classes = None,
    max_detections: MaxDetections = None,
    out_dir: OutDir = None,
    coco: Coco = None,
    model: o.Model = None,
    html: o.Html = None,
    files_from: o.FilesFrom = None,
    null: o.NullSeparated = False,
    format: o.Format = "auto",
    output: o.Output = None,
    device: o.Device = "auto",
    precision: o.Precision = "auto",
    batch_size: o.BatchSize = None,
    workers: o.Workers = None,
    max_pixels: o.MaxPixels = o.DEFAULT_MAX_PIXELS_VALUE,
    no_draft: o.NoDraft = False,
    offline: o.Offline = False,
    compile_model: o.Compile = False,
    shard: o.Shard = None,
    quiet: o.Quiet = False,
) -> None:
    """Detect objects with DETR (default: detr-r50, COCO classes); boxes in original-image pixels.

    Example: vitkit detect photos/ --classes person,dog --out-dir annotated/ --coco detections.json
    """
    from vitkit.evaluation.coco import CocoResultsSink
    from vitkit.models.loading import load_model
    from vitkit.runtime.runner import RunOptions
    from vitkit.tasks.detect import DetectOptions, DetectTask

    items = collect_inputs(inputs, files_from, null, shard)
    wanted = tuple(c.strip() for c in classes.split(",") if c.strip()) if classes else ()
    loaded = load_model(resolve(model, DETECT), DETECT, device, precision, offline, compile=compile_model)
    options = DetectOptions(threshold, wanted, max_detections, out_dir, max_pixels)
    task = DetectTask(loaded, options, [i.path for i in items])
    sinks = [CocoResultsSink(coco, task.id2label)] if coco else []
    run_and_write(task, items, RunOptions(batch_size, workers, not no_draft, max_pixels, default_batch_size=4),
                  OutputOptions(format, output, quiet, html), sinks)
