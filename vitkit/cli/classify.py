"""`vitkit classify`: top-k labels from a timm or transformers image classifier."""

from __future__ import annotations

from vitkit.cli.options import TopK, command
from vitkit.jobs import plan_classify
from vitkit.pipeline import BatchOptions, InputOptions, ModelOptions, OutputOptions, execute


@command()
def classify(inputs: InputOptions, top_k: TopK = 5, *, model: ModelOptions, batch: BatchOptions,
             out: OutputOptions) -> int:
    """Classify images with a vision transformer: timm or transformers (default: vit-b16, ImageNet-1k).

    Example: vitkit classify photos/ --top-k 3 --format jsonl > labels.jsonl
    """
    return execute(plan_classify(inputs, model, batch, top_k=top_k, html=out.html), out)
