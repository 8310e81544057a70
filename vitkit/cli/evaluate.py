"""`vitkit eval detect`: COCO-style mAP of a detector against ground truth."""

from __future__ import annotations

from typing import Annotated

import typer

from vitkit.cli import options as o
from vitkit.errors import EXIT_OK, EXIT_SOME_INPUTS_FAILED
from vitkit.models.registry import DETECT, resolve

app = typer.Typer(help="Evaluate models against ground truth.", no_args_is_help=True)

CocoGt = Annotated[str, typer.Option("--coco-gt", metavar="FILE", help="COCO instances JSON with the ground truth.")]
ImagesDir = Annotated[str, typer.Argument(help="Folder the ground truth's file_name entries are relative to.")]
Threshold = Annotated[float, typer.Option("--threshold", min=0.0, max=1.0,
                                          help="Score floor; COCO mAP wants low-scoring boxes too.")]


@app.command("detect")
def eval_detect(
    images_dir: ImagesDir,
    coco_gt: CocoGt,
    threshold: Threshold = 0.001,
    model: o.Model = None,
    format: o.Format = "auto",
    device: o.Device = "auto",
    precision: o.Precision = "auto",
    batch_size: o.BatchSize = None,
    workers: o.Workers = None,
    no_draft: o.NoDraft = False,
    offline: o.Offline = False,
    compile_model: o.Compile = False,
    quiet: o.Quiet = False,
) -> None:
    """Detect on the ground truth's images and report mAP@[.5:.95], AP50 and AP75 (100 detections an image).

    Example: vitkit eval detect --coco-gt instances_val2017.json val2017/
    """
    from vitkit.evaluation.detect import evaluate_detector
    from vitkit.runtime.distributed import refuse_launch
    from vitkit.evaluation.metrics import load_coco_ground_truth
    from vitkit.models.loading import load_model
    from vitkit.runtime.report import Reporter
    from vitkit.runtime.runner import RunOptions
    from vitkit.tasks.detect import DetectOptions, DetectTask
    from vitkit.evaluation.report import evaluation_warnings, write_evaluation
    from vitkit.outputs.writers import resolve_format

    refuse_launch("eval detect", "run it as one process; `vitkit detect` runs under torchrun")

    ground_truth = load_coco_ground_truth(coco_gt)
    task = DetectTask(load_model(resolve(model, DETECT), DETECT, device, precision, offline, compile=compile_model),
                      DetectOptions(threshold=threshold, max_detections=100))
    reporter = Reporter(quiet=quiet)
    run_options = RunOptions(batch_size, workers, not no_draft, default_batch_size=4)
    result = evaluate_detector(task, ground_truth, images_dir, run_options, reporter)
    for warning in evaluation_warnings(result):
        reporter.message(warning)
    write_evaluation(result, resolve_format(format, None))
    raise typer.Exit(EXIT_SOME_INPUTS_FAILED if result.failed_images else EXIT_OK)
