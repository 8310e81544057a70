"""Options shared by the commands, declared once, and `@command`, which splices them into a command.

A command body names the option objects it wants (`model: ModelOptions`); `@command` replaces each
by that object's flags in the signature Typer reads, and packs the parsed values back into the object
before calling the body. Defaults come from the dataclasses in vitkit/pipeline.py, which the library
functions use too, so a flag and its keyword argument cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from typing import Annotated, Any, Callable, Literal, Optional

import typer

from vitkit.pipeline import BatchOptions, InputOptions, ModelOptions, OutputOptions

Inputs = Annotated[Optional[list[str]], typer.Argument(
    help="Image files, folders (searched recursively, hidden files skipped) or quoted globs.", show_default=False)]
FilesFrom = Annotated[Optional[str], typer.Option(
    "--files-from", metavar="FILE", help="Also read input paths from FILE, one a line; '-' reads stdin.")]
NullSeparated = Annotated[bool, typer.Option(
    "-0", "--null", help="Paths in --files-from are NUL-separated (as from `find -print0`).")]
Shard = Annotated[Optional[str], typer.Option(
    "--shard", metavar="I/N", help="Process only shard I of N (0-based, contiguous slices of the inputs in input order); "
    "for SLURM arrays and shell loops.", show_default=False)]
Format = Annotated[Literal["auto", "table", "json", "jsonl", "csv"], typer.Option(
    "--format", "-f",
    help="auto: a table on a terminal, JSON lines in a pipe (or from --output's extension).")]
Output = Annotated[Optional[str], typer.Option(
    "--output", "-o", metavar="FILE", help="Write results to FILE (atomically) instead of stdout.")]
Html = Annotated[Optional[str], typer.Option(
    "--html", metavar="FILE", help="Also write a self-contained HTML contact sheet of the results.")]
Resume = Annotated[bool, typer.Option(
    "--resume", help="Append to --output (JSONL or CSV) as results come, and on a rerun skip the inputs it already "
    "has results for (failed ones run again). Without it the output file is written whole or not at all.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar, warnings or per-file error lines on stderr.")]
Model = Annotated[Optional[str], typer.Option(
    "--model", "-m", help="Catalogue alias, timm/… or hf-hub:… reference, open_clip ARCH:TAG, or a local model folder.",
    show_default=False)]
# Any string: the loader checks what this machine has and says so in vitkit's own words.
Device = Annotated[str, typer.Option(
    "--device", metavar="auto|cpu|cuda|cuda:N|mps", help="auto picks cuda, then mps, then cpu.")]
Precision = Annotated[Literal["auto", "fp32", "fp16", "bf16", "int8"], typer.Option(
    "--precision",
    help="auto: bf16/fp16 on a GPU, fp32 on CPU. int8: dynamic int8 Linear layers (CPU only; see README).")]
Offline = Annotated[bool, typer.Option(
    "--offline", help="Never contact the Hugging Face Hub; use cached weights only (as HF_HUB_OFFLINE=1).")]
Compile = Annotated[bool, typer.Option(
    "--compile", help="torch.compile the model (slow first batch, faster after; worth it for large runs).")]
BatchSize = Annotated[Optional[int], typer.Option(
    "--batch-size", "-b", min=1, help="Images per forward pass. Default: the command's own on CPU "
    "(16; detect, segment, depth and pose 4, inpaint 8), 4x that on a GPU.", show_default=False)]
Workers = Annotated[Optional[int], typer.Option(
    "--workers", min=0, help="Decoding processes (0 decodes in the main process). Default: suited to this machine.",
    show_default=False)]
Draft = Annotated[bool, typer.Option(
    "--draft/--no-draft", help="Decode large JPEGs at a reduced scale when the model needs far fewer pixels "
    "(--no-draft always decodes at full resolution; slower).")]
MaxPixels = Annotated[int, typer.Option(
    "--max-pixels", min=1, help="Refuse images with more pixels than this (decompression-bomb guard).")]
TopK = Annotated[int, typer.Option("--top-k", "-k", min=1, help="How many labels to report per image.")]
ProcessorOption = Annotated[Optional[list[str]], typer.Option(
    "--processor-option", metavar="KEY=VALUE", help="A setting of the vision-language model's own image processor "
    "for this run, VALUE as JSON (repeatable): e.g. do_image_splitting=false makes SmolVLM read one 512-px view "
    "instead of up to 16 tiles, far faster on a CPU.")]


def threshold_option(help: str) -> Any:
    """--threshold, checked by the library (vitkit.jobs.check_threshold) the same way for every command."""
    return Annotated[Optional[float], typer.Option("--threshold", metavar="SCORE", help=help)]


# The flags of each option object, by field name (the keyword argument of the library functions).
GROUPS: dict[type, dict[str, Any]] = {
    InputOptions: {"inputs": Inputs, "files_from": FilesFrom, "null": NullSeparated, "shard": Shard},
    ModelOptions: {"model": Model, "device": Device, "precision": Precision, "offline": Offline, "compile": Compile},
    BatchOptions: {"batch_size": BatchSize, "workers": Workers, "draft": Draft, "max_pixels": MaxPixels},
    OutputOptions: {"format": Format, "output": Output, "quiet": Quiet, "html": Html, "resume": Resume},
}


def command(omit: tuple[str, ...] = ()) -> Callable[[Callable[..., int | None]], Callable[..., None]]:
    """Splice the shared flags of the body's option objects into its signature (all but `omit`), and
    exit with the status the body returns."""

    def decorate(body: Callable[..., int | None]) -> Callable[..., None]:
        hints = typing.get_type_hints(body, include_extras=True)
        arguments, own, shared, packs = [], [], [], {}
        for name in inspect.signature(body).parameters:
            group = hints[name]
            if group not in GROUPS:
                own.append(_parameter(name, hints[name], inspect.signature(body).parameters[name].default))
                continue
            defaults = {f.name: f.default for f in dataclasses.fields(group)}
            packs[name] = (group, [n for n in GROUPS[group] if n not in omit])
            for field in packs[name][1]:
                param = _parameter(field, GROUPS[group][field], defaults[field])
                (arguments if _is_argument(param) else shared).append(param)

        @functools.wraps(body)
        def run(**values: Any) -> None:
            for name, (group, fields) in packs.items():
                values[name] = group(**{field: values.pop(field) for field in fields})
                if callable(check := getattr(values[name], "check", None)):
                    check()  # refusals that need no model come before it loads
            raise typer.Exit(body(**values) or 0)

        run.__signature__ = inspect.Signature([*arguments, *own, *shared])  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in run.__signature__.parameters.values()}
        return run

    return decorate


def _parameter(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)


def _is_argument(param: inspect.Parameter) -> bool:
    return any(isinstance(extra, typer.models.ArgumentInfo) for extra in getattr(param.annotation, "__metadata__", ()))
