"""`vitkit bench`: model-only and end-to-end throughput on generated JPEGs."""

from __future__ import annotations

from typing import Annotated

import typer

from vitkit.cli.options import command
from vitkit.jobs import run_bench
from vitkit.pipeline import BatchOptions, ModelOptions, OutputOptions, write_rows

Images = Annotated[int, typer.Option("--images", "-n", min=1, help="How many JPEGs to generate and run end to end.")]
Size = Annotated[str, typer.Option("--size", metavar="WxH", help="Pixel size of the generated JPEGs.")]
Repeats = Annotated[int, typer.Option("--repeats", min=1, help="Timed passes of each kind after a warm-up; the median is reported with its min-max spread.")]


@command(omit=("max_pixels", "output", "html", "resume"))
def bench(images: Images = 64, size: Size = "1920x1080", repeats: Repeats = 3, *, model: ModelOptions, batch: BatchOptions,
          out: OutputOptions) -> int:
    """Measure a model's throughput alone and from JPEG files to results (classifiers, or CLIP image embeddings).

    Example: vitkit bench --model vit-s16 --batch-size 32 --images 128 --size 4000x3000
    """
    return write_rows(run_bench(model, batch, images=images, size=size, repeats=repeats, quiet=out.quiet), out)
