"""`vitkit embed`: image vectors from a timm or open_clip model, as an .npy matrix (+ .jsonl of paths) or Parquet."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

import typer

from vitkit.cli.options import command
from vitkit.errors import UsageError
from vitkit.jobs import plan_embed
from vitkit.pipeline import BatchOptions, InputOptions, ModelOptions, OutputOptions, execute

EmbeddingOutput = Annotated[Optional[str], typer.Option(
    "--output", "-o", metavar="FILE", show_default=False,
    help="emb.npy: an (N, D) matrix, with its paths in emb.jsonl beside it ({row, path} a line); emb.parquet: "
         "path and embedding columns. One row per image that worked, in input order; written atomically at the end. "
         "Records (path, width, height, row) still go to stdout.")]
Dtype = Annotated[Literal["float32", "float16"], typer.Option(
    "--dtype", help="Number type of the file's vectors (float16: half the size, about 3 significant digits).")]
Raw = Annotated[bool, typer.Option("--raw", help="The model's vectors as they are, not scaled to unit length.")]
Resume = Annotated[bool, typer.Option("--resume", hidden=True)]


@command(omit=("output", "resume"))
def embed(inputs: InputOptions, output: EmbeddingOutput = None, dtype: Dtype = "float32", raw: Raw = False,
          resume: Resume = False, *, model: ModelOptions, batch: BatchOptions, out: OutputOptions) -> int:
    """Embed images with a timm or open_clip model (default: dino-s16): its pooled vector, unit length.

    Example: vitkit embed photos/ -o emb.npy --model dinov2-s14
    """
    if resume:
        raise UsageError("embed writes its file whole at the end and cannot --resume",
                         hint="split a long run with --shard I/N, one -o file per shard")
    job = plan_embed(inputs, model, batch, output=output, dtype=dtype, raw=raw, html=out.html,
                     vectors_in_records=False)
    return execute(job, out)
