"""`vitkit detect`: DETR object detection, or open-vocabulary detection from --prompt, with annotated
images and COCO export."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from vitkit.cli.options import command, threshold_option
from vitkit.jobs import plan_detect
from vitkit.pipeline import BatchOptions, InputOptions, ModelOptions, OutputOptions, execute

Threshold = threshold_option("Minimum detection score (0 to 1); default 0.7 for DETR, 0.1 for OWL-ViT/OWLv2, "
                             "0.3 for Grounding DINO.")
Prompt = Annotated[Optional[list[str]], typer.Option(
    "--prompt", metavar="TEXT", help="Find this (repeatable; open-vocabulary models, default owlv2-b); "
                                     "synonyms as one label: 'car|automobile'.")]
PromptsFile = Annotated[Optional[str], typer.Option("--prompts-file", metavar="FILE", help="Prompts, one a line (added to --prompt).")]
Negative = Annotated[Optional[list[str]], typer.Option(
    "--negative", metavar="TEXT", help="Never report this; its boxes remove prompted boxes they overlap (IoU >= 0.5).")]
Classes = Annotated[Optional[str], typer.Option("--classes", help="Keep only these labels, comma-separated (e.g. 'person,dog').")]
MaxDetections = Annotated[Optional[int], typer.Option("--max-detections", min=1, help="Keep at most N boxes per image.")]
OutDir = Annotated[Optional[str], typer.Option("--out-dir", metavar="DIR", help="Write annotated images here, mirroring the input tree.")]
Masks = Annotated[bool, typer.Option(
    "--masks", help="Segment every detected box with Segment Anything: each detection gets a `mask` (COCO RLE), "
                    "--coco a segmentation, --out-dir images the masks.")]
MaskModel = Annotated[Optional[str], typer.Option(
    "--mask-model", metavar="MODEL", help="The SAM checkpoint for --masks (default: sam-b).")]
Coco = Annotated[Optional[str], typer.Option("--coco", metavar="FILE", help="Also write a COCO-format JSON (images, categories, scored annotations).")]


@command()
def detect(inputs: InputOptions, threshold: Threshold = None, classes: Classes = None, prompt: Prompt = None,
           prompts_file: PromptsFile = None, negative: Negative = None,
           max_detections: MaxDetections = None, out_dir: OutDir = None, coco: Coco = None, masks: Masks = False,
           mask_model: MaskModel = None, *, model: ModelOptions, batch: BatchOptions, out: OutputOptions) -> int:
    """Detect objects with DETR (default: detr-r50, COCO classes), or anything named with --prompt
    (OWLv2, Grounding DINO); boxes in original-image pixels.

    Example: vitkit detect photos/ --classes person,dog --out-dir annotated/ --coco detections.json
    Example: vitkit detect photos/ --prompt "red car" --prompt "forklift|lift truck" --negative "toy car"
    """
    job = plan_detect(inputs, model, batch, threshold=threshold, classes=classes, max_detections=max_detections,
                      out_dir=out_dir, coco=coco, masks=masks, mask_model=mask_model, html=out.html,
                      prompt=prompt, prompts_file=prompts_file, negative=negative)
    return execute(job, out)
