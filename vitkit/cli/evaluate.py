"""`vitkit eval detect`: COCO-style mAP of a detector against ground truth."""

from __future__ import annotations

from typing import Annotated

import typer

from vitkit.cli.options import command, threshold_option
from vitkit.jobs import run_eval_detect
from vitkit.pipeline import BatchOptions, ModelOptions, OutputOptions, write_rows

app = typer.Typer(help="Evaluate models against ground truth.", no_args_is_help=True)

CocoGt = Annotated[str, typer.Option("--coco-gt", metavar="FILE", help="COCO instances JSON with the ground truth.")]
ImagesDir = Annotated[str, typer.Argument(help="Folder the ground truth's file_name entries are relative to.")]
Threshold = threshold_option("Score floor (0 to 1); COCO mAP wants low-scoring boxes too.")


@app.command("detect")
@command(omit=("max_pixels", "output", "html", "resume"))
def eval_detect(images_dir: ImagesDir, coco_gt: CocoGt, threshold: Threshold = 0.001, *, model: ModelOptions,
                batch: BatchOptions, out: OutputOptions) -> int:
    """Detect on the ground truth's images and report mAP@[.5:.95], AP50 and AP75 (100 detections an image).

    Example: vitkit eval detect --coco-gt instances_val2017.json val2017/
    """
    listing = run_eval_detect(images_dir, coco_gt, model, batch, threshold=threshold, quiet=out.quiet)
    return write_rows(listing, out)
