"""`vitkit inpaint`: hide patches (at random, in a box or under a mask) and let a masked autoencoder fill them in."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from vitkit.cli import options as o
from vitkit.cli.common import OutputOptions, collect_inputs, run_and_write
from vitkit.models.registry import INPAINT, resolve

MaskRatio = Annotated[Optional[float], typer.Option(
    "--mask-ratio", min=0.0, max=1.0,
    help="Random masking: the fraction of patches to hide (nearest whole number of patches); 0.75 if not given.",
    show_default=False)]
Seed = Annotated[Optional[int], typer.Option(
    "--seed", help="Random masking: each image's mask comes from this seed and its path, whatever the batch; "
                   "0 if not given.", show_default=False)]
Mask = Annotated[Optional[str], typer.Option(
    "--mask", metavar="MASK.png",
    help="Inpaint where this image is light (transparent counts as dark), stretched over each input; "
         "every patch it touches is hidden.")]
BoxOption = Annotated[Optional[str], typer.Option(
    "--box", metavar="x0,y0,x1,y1",
    help="Inpaint this box, in original-image pixels (clipped to each image); every patch it touches is hidden.")]
OutDir = Annotated[Optional[str], typer.Option(
    "--out-dir", metavar="DIR",
    help="Required. Write each composite PNG here (original pixels except in hidden patches), "
         "mirroring the input tree.")]
Grid = Annotated[bool, typer.Option(
    "--grid", help="Also write a sheet per image: original | masked | reconstruction | composite.")]


def inpaint(
    inputs: o.Inputs = None,
    mask_ratio: MaskRatio = None,
    seed: Seed = None,
    mask: Mask = None,
    box: BoxOption = None,
    out_dir: OutDir = None,
    grid: Grid = False,
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
    """Reconstruct hidden patches with a masked autoencoder (default: mae-large); composites at full size.

    Example: vitkit inpaint photos/ --box 40,60,200,180 --out-dir inpainted/ --grid
    """
    from vitkit.models.loading import load_model
    from vitkit.runtime.runner import RunOptions
    from vitkit.tasks.inpaint import InpaintOptions, InpaintTask, parse_box

    options = InpaintOptions(out_dir, mask_ratio, seed, parse_box(box) if box is not None else None, mask, grid,
                             max_pixels)
    items = collect_inputs(inputs, files_from, null, shard)
    loaded = load_model(resolve(model, INPAINT), INPAINT, device, precision, offline, compile=compile_model)
    task = InpaintTask(loaded, options, [i.path for i in items])
    run_and_write(task, items, RunOptions(batch_size, workers, not no_draft, max_pixels, default_batch_size=8),
                  OutputOptions(format, output, quiet))
