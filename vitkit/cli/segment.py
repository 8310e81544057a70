"""`vitkit segment`: semantic, panoptic or text-prompted segmentation, with label masks and overlays."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

import typer

from vitkit.cli import options as o
from vitkit.cli.common import OutputOptions, collect_inputs, run_and_write
from vitkit.models.registry import DEFAULT_SEGMENT_MODELS, SEGMENT, resolve

Mode = Annotated[Literal["semantic", "panoptic", "text"], typer.Option(
    "--mode", help="semantic: a class for every pixel (SegFormer); panoptic: numbered object and stuff segments "
                   "(Mask2Former, DETR); text: one mask per --prompt (CLIPSeg).")]
Prompt = Annotated[Optional[list[str]], typer.Option(
    "--prompt", "-p", help="Text mode: what to find; repeat for several (--prompt 'a dog' --prompt grass).",
    show_default=False)]
OutDir = Annotated[Optional[str], typer.Option(
    "--out-dir", metavar="DIR",
    help="Write a label mask PNG and a colour overlay PNG per image here, mirroring the input tree. "
         "Without it, records list the segments and mask/overlay are null.")]
Alpha = Annotated[float, typer.Option("--alpha", min=0.0, max=1.0, help="Opacity of the segment colours in overlays.")]
Instances = Annotated[bool, typer.Option(
    "--instances", help="Semantic mode: split each class into connected regions, each its own segment id.")]
MinArea = Annotated[int, typer.Option(
    "--min-area", min=0, metavar="N", help="Drop segments smaller than N pixels (0 keeps all).")]


def segment(
    inputs: o.Inputs = None,
    mode: Mode = "semantic",
    prompt: Prompt = None,
    out_dir: OutDir = None,
    alpha: Alpha = 0.5,
    instances: Instances = False,
    min_area: MinArea = 0,
    model: o.Model = None,
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
    """Segment images (default: segformer-b0 semantic, mask2former-swin-t panoptic, clipseg text); masks at full size.

    Example: vitkit segment photos/ --mode text --prompt 'a dog' --prompt grass --out-dir masks/
    """
    from vitkit.models.loading import load_model
    from vitkit.runtime.runner import RunOptions
    from vitkit.tasks.segment import SegmentOptions, SegmentTask

    options = SegmentOptions(mode, tuple(prompt or ()), out_dir, alpha, instances, min_area, max_pixels)
    items = collect_inputs(inputs, files_from, null, shard)
    loaded = load_model(resolve(model or DEFAULT_SEGMENT_MODELS[mode], SEGMENT), SEGMENT, device, precision, offline, compile=compile_model)
    task = SegmentTask(loaded, options, [i.path for i in items])
    run_and_write(task, items, RunOptions(batch_size, workers, not no_draft, max_pixels, default_batch_size=4),
                  OutputOptions(format, output, quiet))
