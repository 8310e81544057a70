"""`vitkit index`: build or update the embedded CLIP index of folders."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from vitkit.cli import options as o
from vitkit.errors import EXIT_OK, EXIT_SOME_INPUTS_FAILED, UsageError

Folders = Annotated[Optional[list[str]], typer.Argument(help="Folders (or files) to index.", show_default=False)]
IndexDir = Annotated[Optional[str], typer.Option(
    "--index", metavar="DIR", help="Index folder. Default: one per model under $VITKIT_HOME (~/.local/share/vitkit).",
    show_default=False)]
Rebuild = Annotated[bool, typer.Option("--rebuild", help="Drop an index built with another model and re-embed.")]
Wait = Annotated[float, typer.Option("--wait", min=0, metavar="SECONDS", help="Wait this long for another indexer to finish.")]


def index(
    folders: Folders = None,
    index_dir: IndexDir = None,
    model: o.Model = None,
    rebuild: Rebuild = False,
    wait: Wait = 0.0,
    format: o.Format = "auto",
    device: o.Device = "auto",
    precision: o.Precision = "auto",
    batch_size: o.BatchSize = o.DEFAULT_BATCH_SIZE,
    workers: o.Workers = None,
    max_pixels: o.MaxPixels = o.DEFAULT_MAX_PIXELS_VALUE,
    no_draft: o.NoDraft = False,
    offline: o.Offline = False,
    compile_model: o.Compile = False,
    shard: o.Shard = None,
    quiet: o.Quiet = False,
) -> None:
    """Embed images into an on-disk index; reruns only embed what changed.

    Example: vitkit index ~/Pictures && vitkit search --text "a dog on a beach"
    """
    from dataclasses import asdict

    from vitkit.indexing import IndexOptions, index_folders
    from vitkit.report import Reporter
    from vitkit.runner import RunOptions
    from vitkit.writers import resolve_format, write_listing

    if not folders:
        raise UsageError("no folders given", hint="vitkit index FOLDER...")
    options = IndexOptions(index_dir, model, rebuild, wait, device, precision, offline,
                           RunOptions(batch_size, workers, not no_draft, max_pixels), compile_model, shard)
    result = index_folders(folders, options, Reporter(quiet=quiet))
    row = {"index": str(result.folder), **asdict(result.counts)}
    write_listing([row], tuple(row), resolve_format(format, None))
    raise typer.Exit(EXIT_SOME_INPUTS_FAILED if result.counts.failed else EXIT_OK)
