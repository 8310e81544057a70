"""`vitkit inpaint`: hide patches (at random, in a box or under a mask) and let a masked autoencoder fill them in."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from vitkit.cli.options import command
from vitkit.jobs import plan_inpaint
from vitkit.pipeline import BatchOptions, InputOptions, ModelOptions, OutputOptions, execute

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


@command(omit=("html",))
def inpaint(inputs: InputOptions, mask_ratio: MaskRatio = None, seed: Seed = None, mask: Mask = None,
            box: BoxOption = None, out_dir: OutDir = None, grid: Grid = False, *, model: ModelOptions,
            batch: BatchOptions, out: OutputOptions) -> int:
    """Reconstruct hidden patches with a masked autoencoder (default: mae-large); composites at full size.

    Example: vitkit inpaint photos/ --box 40,60,200,180 --out-dir inpainted/ --grid
    """
    job = plan_inpaint(inputs, model, batch, out_dir=out_dir, mask_ratio=mask_ratio, seed=seed, mask=mask, box=box,
                       grid=grid)
    return execute(job, out)
