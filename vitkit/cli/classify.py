"""`vitkit classify`: top-k ImageNet (or the checkpoint's own) labels with a timm ViT/DeiT/EVA."""

from __future__ import annotations

from typing import Annotated

import typer

from vitkit.cli import options as o
from vitkit.cli.common import OutputOptions, collect_inputs, run_and_write
from vitkit.models.registry import CLASSIFY, resolve

TopK = Annotated[int, typer.Option("--top-k", "-k", min=1, help="How many labels to report per image.")]


def classify(
    inputs: o.Inputs = None,
    top_k: TopK = 5,
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
    """Classify images with a timm vision transformer (default: vit-b16, ImageNet-1k).

    Example: vitkit classify photos/ --top-k 3 --format jsonl > labels.jsonl
    """
    from vitkit.models.loading import load_model  # torch loads here, so `--help` stays instant
    from vitkit.runtime.runner import RunOptions
    from vitkit.tasks.classify import ClassifyTask

    items = collect_inputs(inputs, files_from, null, shard)
    loaded = load_model(resolve(model, CLASSIFY), CLASSIFY, device, precision, offline, compile=compile_model)
    task = ClassifyTask(loaded, top_k)
    run_and_write(task, items, RunOptions(batch_size, workers, not no_draft, max_pixels),
                  OutputOptions(format, output, quiet))
