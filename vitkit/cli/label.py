"""`vitkit label`: CLIP zero-shot labels from flags or a file, with prompt-template ensembles."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from vitkit.cli import options as o
from vitkit.cli.common import OutputOptions, collect_inputs, run_and_write
from vitkit.models.registry import ZEROSHOT, resolve

Labels = Annotated[Optional[str], typer.Option("--labels", "-l", help="Comma-separated labels, e.g. 'cat,dog,car'.")]
LabelsFile = Annotated[Optional[str], typer.Option("--labels-file", metavar="FILE", help="One label a line ('#' comments).")]
Template = Annotated[Optional[list[str]], typer.Option(
    "--template", "-t", help="A prompt with {} for the label; repeat to ensemble. Default: --templates imagenet7.")]
Templates = Annotated[Optional[str], typer.Option(
    "--templates", metavar="SET|FILE", help="Built-in set (imagenet7, imagenet80, none) or a file of templates.")]
MultiLabel = Annotated[bool, typer.Option(
    "--multi-label", help="Score labels independently and keep those above --threshold (softmax over labels otherwise).")]
Threshold = Annotated[Optional[float], typer.Option(
    "--threshold", help="For --multi-label: min sigmoid probability (SigLIP, default 0.5) or cosine (CLIP, default 0.25).",
    show_default=False)]
TopK = Annotated[int, typer.Option("--top-k", "-k", min=1, help="Labels per image (single-label mode).")]


def label(
    inputs: o.Inputs = None,
    labels: Labels = None,
    labels_file: LabelsFile = None,
    template: Template = None,
    templates: Templates = None,
    multi_label: MultiLabel = False,
    threshold: Threshold = None,
    top_k: TopK = 5,
    model: o.Model = None,
    html: o.Html = None,
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
    """Label images zero-shot with CLIP (default: clip-b32) against labels you choose.

    Example: vitkit label photos/ --labels "cat,dog,rocket" --top-k 2
    """
    from vitkit.models.loading import load_model
    from vitkit.runtime.runner import RunOptions
    from vitkit.tasks.zeroshot import ZeroShotTask, resolve_labels, resolve_templates

    names, prompts = resolve_labels(labels, labels_file), resolve_templates(template, templates)
    items = collect_inputs(inputs, files_from, null, shard)
    loaded = load_model(resolve(model, ZEROSHOT), ZEROSHOT, device, precision, offline, compile=compile_model)
    task = ZeroShotTask(loaded, names, prompts, top_k, multi_label, threshold)
    run_and_write(task, items, RunOptions(batch_size, workers, not no_draft, max_pixels),
                  OutputOptions(format, output, quiet, html))
