"""`vitkit segment`: semantic, panoptic, text-prompted or automatic (SAM) segmentation, with label masks and overlays."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

import typer

from vitkit.cli.options import command
from vitkit.jobs import plan_segment
from vitkit.pipeline import BatchOptions, InputOptions, ModelOptions, OutputOptions, execute

Mode = Annotated[Literal["semantic", "panoptic", "text", "prompt", "auto"], typer.Option(
    "--mode", help="semantic: a class for every pixel (SegFormer); panoptic: numbered object and stuff segments "
                   "(Mask2Former, DETR); text: one mask per --prompt (CLIPSeg); prompt: Segment Anything's mask "
                   "for --point/--box (sam-b); auto: Segment Anything's masks from a grid of points (sam-b).")]
Prompt = Annotated[Optional[list[str]], typer.Option(
    "--prompt", "-p", metavar="TEXT",
    help="Text mode: what to find; repeat for several (--prompt 'a dog' --prompt grass).", show_default=False)]
OutDir = Annotated[Optional[str], typer.Option(
    "--out-dir", metavar="DIR",
    help="Write a label mask PNG and a colour overlay PNG per image here, mirroring the input tree. "
         "Without it, records list the segments and mask/overlay are null.")]
Alpha = Annotated[float, typer.Option("--alpha", min=0.0, max=1.0, help="Opacity of the segment colours in overlays.")]
Instances = Annotated[bool, typer.Option(
    "--instances", help="Semantic mode: split each class into connected regions, each its own segment id.")]
Point = Annotated[Optional[list[str]], typer.Option(
    "--point", metavar="X,Y[,LABEL]",
    help="Prompt mode: a point in image pixels, label 1 foreground (default) or 0 background; repeat for several. "
         "All points and the --box make one prompt, one mask.", show_default=False)]
Box = Annotated[Optional[str], typer.Option(
    "--box", metavar="X0,Y0,X1,Y1", help="Prompt mode: a box in image pixels (with the points, one prompt).")]
AllMasks = Annotated[bool, typer.Option(
    "--all-masks", help="Prompt mode: keep all of SAM's multimask outputs, not only the best by predicted IoU.")]
MinArea = Annotated[int, typer.Option(
    "--min-area", min=0, metavar="N", help="Drop segments smaller than N pixels (0 keeps all).")]
PointsPerSide = Annotated[Optional[int], typer.Option(
    "--points-per-side", min=1, metavar="N", help="Auto mode: an N x N grid of point prompts.  [default: 32]",
    show_default=False)]
PointsPerBatch = Annotated[Optional[int], typer.Option(
    "--points-per-batch", min=1, metavar="N", help="Auto mode: points decoded together.  [default: 64]",
    show_default=False)]
PredIou = Annotated[Optional[float], typer.Option(
    "--pred-iou-threshold", metavar="T", help="Auto mode: keep masks whose predicted IoU is above T (0: all).  "
    "[default: 0.88]", show_default=False)]
Stability = Annotated[Optional[float], typer.Option(
    "--stability-score-threshold", metavar="T", help="Auto mode: keep masks whose stability score is above T "
    "(0: all).  [default: 0.95]", show_default=False)]
BoxNms = Annotated[Optional[float], typer.Option(
    "--box-nms-threshold", metavar="T", help="Auto mode: drop masks whose box overlaps a better one's by more "
    "than this IoU.  [default: 0.7]", show_default=False)]
CropLayers = Annotated[Optional[int], typer.Option(
    "--crop-layers", min=0, metavar="N", help="Auto mode: also segment crops of the image (not supported yet; "
    "0 only).  [default: 0]", show_default=False)]


@command()
def segment(inputs: InputOptions, mode: Mode = "semantic", prompt: Prompt = None, out_dir: OutDir = None,
            alpha: Alpha = 0.5, instances: Instances = False, min_area: MinArea = 0, point: Point = None,
            box: Box = None, all_masks: AllMasks = False,
            points_per_side: PointsPerSide = None, points_per_batch: PointsPerBatch = None,
            pred_iou_threshold: PredIou = None, stability_score_threshold: Stability = None,
            box_nms_threshold: BoxNms = None, crop_layers: CropLayers = None, *, model: ModelOptions,
            batch: BatchOptions, out: OutputOptions) -> int:
    """Segment images (default: segformer-b0 semantic, mask2former-swin-t panoptic, clipseg text, sam-b prompt
    and auto); masks at full size.

    Example: vitkit segment photos/ --mode text --prompt 'a dog' --prompt grass --out-dir masks/
    """
    job = plan_segment(inputs, model, batch, mode=mode, prompt=prompt, out_dir=out_dir, alpha=alpha,
                       instances=instances, min_area=min_area, point=point, box=box, all_masks=all_masks,
                       html=out.html,
                       auto=dict(points_per_side=points_per_side, points_per_batch=points_per_batch,
                                 pred_iou_threshold=pred_iou_threshold, stability_score_threshold=stability_score_threshold,
                                 box_nms_threshold=box_nms_threshold, crop_layers=crop_layers))
    return execute(job, out)
