"""Options shared by the commands, declared once."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

import typer

from vitkit.inputs.decode import DEFAULT_MAX_PIXELS

Inputs = Annotated[Optional[list[str]], typer.Argument(
    help="Image files, folders (searched recursively, hidden files skipped) or quoted globs.", show_default=False)]
FilesFrom = Annotated[Optional[str], typer.Option(
    "--files-from", metavar="FILE", help="Also read input paths from FILE, one a line; '-' reads stdin.")]
NullSeparated = Annotated[bool, typer.Option(
    "-0", "--null", help="Paths in --files-from are NUL-separated (as from `find -print0`).")]
FormatName = Literal["auto", "table", "json", "jsonl", "csv"]
Format = Annotated[FormatName, typer.Option(
    "--format", "-f",
    help="auto: a table on a terminal, JSON lines in a pipe (or from --output's extension).")]
Output = Annotated[Optional[str], typer.Option(
    "--output", "-o", metavar="FILE", help="Write results to FILE (atomically) instead of stdout.")]
Model = Annotated[Optional[str], typer.Option(
    "--model", "-m", help="Catalogue alias, timm/… or hf-hub:… reference, open_clip ARCH:TAG, or a local model folder.",
    show_default=False)]
Device = Annotated[Literal["auto", "cpu", "cuda", "mps"], typer.Option(
    "--device", help="auto picks cuda, then mps, then cpu.")]
Precision = Annotated[Literal["auto", "fp32", "fp16", "bf16", "int8"], typer.Option(
    "--precision",
    help="auto: bf16/fp16 on a GPU, fp32 on CPU. int8: dynamic int8 Linear layers (CPU only; see README).")]
Compile = Annotated[bool, typer.Option(
    "--compile", help="torch.compile the model (slow first batch, faster after; worth it for large runs).")]
Shard = Annotated[Optional[str], typer.Option(
    "--shard", metavar="I/N", help="Process only shard I of N (0-based, contiguous slices of the inputs in input order); "
    "for SLURM arrays and shell loops.", show_default=False)]
BatchSize = Annotated[Optional[int], typer.Option(
    "--batch-size", "-b", min=1, help="Images per forward pass. Default: the command's own on CPU "
    "(16; detect and segment 4, inpaint 8), 4x that on a GPU.", show_default=False)]
Workers = Annotated[Optional[int], typer.Option(
    "--workers", min=0, help="Decoding processes (0 decodes in the main process). Default: suited to this machine.",
    show_default=False)]
MaxPixels = Annotated[int, typer.Option(
    "--max-pixels", min=1, help="Refuse images with more pixels than this (decompression-bomb guard).")]
NoDraft = Annotated[bool, typer.Option(
    "--no-draft", help="Always decode JPEGs at full resolution (slower; draft decoding is on by default).")]
Offline = Annotated[bool, typer.Option(
    "--offline", help="Never contact the Hugging Face Hub; use cached weights only (as HF_HUB_OFFLINE=1).")]
Html = Annotated[Optional[str], typer.Option(
    "--html", metavar="FILE", help="Also write a self-contained HTML contact sheet of the results.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar, warnings or per-file error lines on stderr.")]

DEFAULT_MAX_PIXELS_VALUE = DEFAULT_MAX_PIXELS
