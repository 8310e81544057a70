"""`vitkit label`: CLIP zero-shot labels from flags or a file, with prompt-template ensembles."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from vitkit.cli.options import command, threshold_option
from vitkit.jobs import plan_label
from vitkit.pipeline import BatchOptions, InputOptions, ModelOptions, OutputOptions, execute

Labels = Annotated[Optional[str], typer.Option("--labels", "-l", help="Comma-separated labels, e.g. 'cat,dog,car'.")]
LabelsFile = Annotated[Optional[str], typer.Option("--labels-file", metavar="FILE", help="One label a line ('#' comments).")]
Template = Annotated[Optional[list[str]], typer.Option(
    "--template", metavar="TEMPLATE",
    help="A prompt with {} for the label; repeat to ensemble. Default: --templates imagenet7.")]
Templates = Annotated[Optional[str], typer.Option(
    "--templates", metavar="SET|FILE", help="Built-in set (imagenet7, imagenet80, none) or a file of templates.")]
MultiLabel = Annotated[bool, typer.Option(
    "--multi-label", help="Score labels independently and keep those above --threshold (softmax over labels otherwise).")]
Threshold = threshold_option(
    "For --multi-label: min sigmoid probability (SigLIP, default 0.5) or cosine (CLIP, default 0.25).")
TopK = Annotated[int, typer.Option("--top-k", "-k", min=1, help="Labels per image (single-label mode).")]


@command()
def label(inputs: InputOptions, labels: Labels = None, labels_file: LabelsFile = None, template: Template = None,
          templates: Templates = None, multi_label: MultiLabel = False, threshold: Threshold = None,
          top_k: TopK = 5, *, model: ModelOptions, batch: BatchOptions, out: OutputOptions) -> int:
    """Label images zero-shot with CLIP (default: clip-b32) against labels you choose.

    Example: vitkit label photos/ --labels "cat,dog,rocket" --top-k 2
    """
    job = plan_label(inputs, model, batch, labels=labels, labels_file=labels_file, template=template,
                     templates=templates, multi_label=multi_label, threshold=threshold, top_k=top_k, html=out.html)
    return execute(job, out)
