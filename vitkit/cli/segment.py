"""`vitkit segment`: semantic, panoptic or text-prompted segmentation, with label masks and overlays."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

import typer

from vitkit.cli.options import command
from vitkit.jobs import plan_segment
from vitkit.pipeline import BatchOptions, InputOptions, ModelOptions, OutputOptions, execute

Mode = Annotated[Literal["semantic", "panoptic", "text"], typer.Option(
    "--mode", help="semantic: a class for every pixel (SegFormer); panoptic: numbered object and stuff segments "
                   "(Mask2Former, DETR); text: one mask per --prompt (CLIPSeg).")]
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
MinArea = Annotated[int, typer.Option(
    "--min-area", min=0, metavar="N", help="Drop segments smaller than N pixels (0 keeps all).")]


@command()
def segment(inputs: InputOptions, mode: Mode = "semantic", prompt: Prompt = None, out_dir: OutDir = None,
            alpha: Alpha = 0.5, instances: Instances = False, min_area: MinArea = 0, *, model: ModelOptions,
            batch: BatchOptions, out: OutputOptions) -> int:
    """Segment images (default: segformer-b0 semantic, mask2former-swin-t panoptic, clipseg text); masks at full size.

    Example: vitkit segment photos/ --mode text --prompt 'a dog' --prompt grass --out-dir masks/
    """
    job = plan_segment(inputs, model, batch, mode=mode, prompt=prompt, out_dir=out_dir, alpha=alpha,
                       instances=instances, min_area=min_area, html=out.html)
    return execute(job, out)
