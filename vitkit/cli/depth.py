"""`vitkit depth`: a depth map per image (16-bit PNG, optional .npy) with a colour preview."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from vitkit.cli.options import command
from vitkit.jobs import plan_depth
from vitkit.pipeline import BatchOptions, InputOptions, ModelOptions, OutputOptions, execute

OutDir = Annotated[Optional[str], typer.Option(
    "--out-dir", metavar="DIR",
    help="Required. Write each map as a 16-bit PNG (value = level * scale + offset, both in the record) and a "
         "viridis preview (near bright) here, mirroring the input tree.")]
Npy = Annotated[bool, typer.Option("--npy", help="Also write each map as a float32 .npy array beside its PNG.")]


@command()
def depth(inputs: InputOptions, out_dir: OutDir = None, npy: Npy = False, *, model: ModelOptions,
          batch: BatchOptions, out: OutputOptions) -> int:
    """Estimate depth (default: depth-anything-s, relative); maps at the displayed size, kind and unit from the checkpoint.

    Example: vitkit depth photos/ --out-dir depth/ --npy
    """
    job = plan_depth(inputs, model, batch, out_dir=out_dir, npy=npy, html=out.html)
    return execute(job, out)
