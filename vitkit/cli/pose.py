"""`vitkit pose`: human keypoints with ViTPose, top-down from person boxes."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from vitkit.cli.options import command
from vitkit.jobs import plan_pose
from vitkit.pipeline import BatchOptions, InputOptions, ModelOptions, OutputOptions, execute

Detector = Annotated[Optional[str], typer.Option(
    "--detector", metavar="MODEL", help="The model that finds the people (default: detr-r50; any `vitkit detect` model).")]
PersonClass = Annotated[str, typer.Option(
    "--person-class", metavar="LABEL", help="The detector's (or the boxes file's) label for people.")]
PersonThreshold = Annotated[Optional[float], typer.Option(
    "--person-threshold", help="Minimum person box score, 0 to 1. Default: 0.9 for the detector; with "
                               "--boxes-from, every person box in the file.", show_default=False)]
BoxesFrom = Annotated[Optional[str], typer.Option(
    "--boxes-from", metavar="FILE", help="Take person boxes from `vitkit detect` JSON lines or a COCO JSON file "
                                         "(images matched by path or file name) instead of running a detector.")]
WholeImage = Annotated[bool, typer.Option("--whole-image", help="One person per image: the whole image is its box.")]
KptThreshold = Annotated[float, typer.Option(
    "--kpt-threshold", help="Keypoints scoring less are left out of --out-dir drawings (records keep every keypoint).")]
OutDir = Annotated[Optional[str], typer.Option(
    "--out-dir", metavar="DIR", help="Draw each image's skeletons here, mirroring the input tree.")]
Coco = Annotated[Optional[str], typer.Option(
    "--coco", metavar="FILE", help="Also write a COCO keypoints JSON (images, person category, scored annotations).")]


@command()
def pose(inputs: InputOptions, detector: Detector = None, person_class: PersonClass = "person",
         person_threshold: PersonThreshold = None, boxes_from: BoxesFrom = None, whole_image: WholeImage = False,
         kpt_threshold: KptThreshold = 0.3, out_dir: OutDir = None, coco: Coco = None, *, model: ModelOptions,
         batch: BatchOptions, out: OutputOptions) -> int:
    """Estimate human poses (default: vitpose-b, COCO-17 keypoints) in person boxes; pixels of the displayed image.

    Example: vitkit pose photos/ --out-dir poses/ --coco keypoints.json
    """
    job = plan_pose(inputs, model, batch, detector=detector, person_class=person_class,
                    person_threshold=person_threshold, boxes_from=boxes_from, whole_image=whole_image,
                    kpt_threshold=kpt_threshold, out_dir=out_dir, coco=coco, html=out.html)
    return execute(job, out)
