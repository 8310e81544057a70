"""`vitkit attention`: the class token's self-attention of a ViT as heat maps (DINO), or rolled out."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from vitkit.cli.options import command
from vitkit.jobs import plan_attention
from vitkit.pipeline import BatchOptions, InputOptions, ModelOptions, OutputOptions, execute

OutDir = Annotated[Optional[str], typer.Option(
    "--out-dir", metavar="DIR",
    help="Write a heat-map overlay PNG per image here (the displayed image's size), mirroring the input tree. "
         "Without it, records carry the entropy (and mask) and output/heads are null.")]
Alpha = Annotated[float, typer.Option("--alpha", min=0.0, max=1.0, help="Opacity of the heat map in overlays.")]
Heads = Annotated[bool, typer.Option(
    "--heads", help="Also write a sheet per image with one panel per attention head of the last block.")]
KeepMass = Annotated[Optional[float], typer.Option(
    "--keep-mass", metavar="SHARE",
    help="The DINO mask: the fewest patches holding this share of the attention (the paper uses 0.6); "
         "overlays colour only the mask, and records add mask_area and mask_box.", show_default=False)]
Rollout = Annotated[bool, typer.Option(
    "--rollout", help="Attention rollout through every block (Abnar & Zuidema), for supervised ViTs, "
                      "instead of the last block's attention.")]


@command()
def attention(inputs: InputOptions, out_dir: OutDir = None, alpha: Alpha = 0.6, heads: Heads = False,
              keep_mass: KeepMass = None, rollout: Rollout = False, *, model: ModelOptions, batch: BatchOptions,
              out: OutputOptions) -> int:
    """Where a ViT's class token looks (default: dino-s16): heat-map overlays, per-head sheets, DINO masks.

    Example: vitkit attention photos/ --out-dir attention/ --heads --keep-mass 0.6
    """
    job = plan_attention(inputs, model, batch, out_dir=out_dir, alpha=alpha, heads=heads, keep_mass=keep_mass,
                         rollout=rollout, html=out.html)
    return execute(job, out)
