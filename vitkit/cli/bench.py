"""`vitkit bench`: model-only and end-to-end throughput on generated JPEGs."""

from __future__ import annotations

from typing import Annotated

import typer

from vitkit.cli import options as o

Images = Annotated[int, typer.Option("--images", "-n", min=1, help="How many JPEGs to generate and run end to end.")]
Size = Annotated[str, typer.Option("--size", metavar="WxH", help="Pixel size of the generated JPEGs.")]
Repeats = Annotated[int, typer.Option("--repeats", min=1, help="Timed passes of each kind after a warm-up; the median is reported with its min-max spread.")]


def bench(
    model: o.Model = None,
    device: o.Device = "auto",
    precision: o.Precision = "auto",
    batch_size: o.BatchSize = None,
    images: Images = 64,
    size: Size = "1920x1080",
    repeats: Repeats = 3,
    workers: o.Workers = None,
    no_draft: o.NoDraft = False,
    offline: o.Offline = False,
    compile_model: o.Compile = False,
    format: o.Format = "auto",
    quiet: o.Quiet = False,
) -> None:
    """Measure a model's throughput alone and from JPEG files to results (classifiers, or CLIP image embeddings).

    Example: vitkit bench --model vit-s16 --batch-size 32 --images 128 --size 4000x3000
    """
    from vitkit.runtime.bench import BenchOptions, parse_size, run_bench, write_bench  # torch loads here
    from vitkit.runtime.distributed import refuse_launch
    from vitkit.runtime.report import Reporter
    from vitkit.runtime.runner import RunOptions
    from vitkit.outputs.writers import resolve_format

    refuse_launch("bench", "run it as one process, once per GPU with --device cuda:N")

    options = BenchOptions(model, device, precision, batch_size, images, parse_size(size),
                           RunOptions(batch_size, workers, not no_draft), offline, compile_model, repeats=repeats)
    result = run_bench(options, Reporter(quiet=quiet))
    write_bench(result, resolve_format(format, None))
