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
MergeFrom = Annotated[Optional[list[str]], typer.Option(
    "--merge-from", metavar="DIR", help="Merge this shard's index (from --shard I/N --index DIR) into --index "
    "instead of scanning folders; repeat for each shard. For a path in several, the newest mtime wins, then "
    "the last shard.", show_default=False)]
Compact = Annotated[bool, typer.Option(
    "--compact", help="Rewrite the vector file without vectors no file uses (also done by itself when over half are).")]
Failed = Annotated[bool, typer.Option(
    "--failed", help="List the files that failed and are skipped until they change, instead of indexing.")]
Wait = Annotated[float, typer.Option("--wait", min=0, metavar="SECONDS", help="Wait this long for another indexer to finish.")]


def index(
    folders: Folders = None,
    index_dir: IndexDir = None,
    model: o.Model = None,
    rebuild: Rebuild = False,
    merge_from: MergeFrom = None,
    wait: Wait = 0.0,
    compact: Compact = False,
    failed: Failed = False,
    format: o.Format = "auto",
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
    """Embed images into an on-disk index; reruns only embed what changed.

    Example: vitkit index ~/Pictures && vitkit search --text "a dog on a beach"
    """
    from dataclasses import asdict

    from vitkit.runtime.distributed import finish, get_context
    from vitkit.retrieval.update import IndexOptions, compact_index, index_folders, list_failures, merge_indexes
    from vitkit.runtime.options import RunOptions
    from vitkit.runtime.report import Reporter
    from vitkit.outputs.writers import resolve_format, write_listing

    if not folders and not merge_from and not compact and not failed:
        raise UsageError("no folders given",
                         hint="vitkit index FOLDER..., --compact, --failed, or --merge-from SHARD_DIR ... --index DIR")
    if folders and merge_from:
        raise UsageError("pass folders to index or --merge-from shard indexes, not both",
                         hint="merge the shards first, then update with `vitkit index FOLDER --index DIR`")
    options = IndexOptions(index_dir, model, rebuild, wait, device, precision, offline,
                           RunOptions(batch_size, workers, not no_draft, max_pixels), compile_model, shard, compact)
    if failed:
        _, failures = list_failures(options)
        write_listing([asdict(f) for f in failures], ("path", "reason", "size", "mtime_ns"), resolve_format(format, None))
        raise typer.Exit(EXIT_OK)
    if compact and not folders and not merge_from:
        target, dropped = compact_index(options)
        write_listing([{"index": str(target), "compacted": dropped}], ("index", "compacted"), resolve_format(format, None))
        raise typer.Exit(EXIT_OK)
    if merge_from:
        if shard is not None or get_context() is not None:
            raise UsageError("--merge-from runs as one process", hint="drop --shard and run it without torchrun")
        target, merged = merge_indexes(merge_from, options)
        row = {"index": str(target), **asdict(merged)}
        write_listing([row], tuple(row), resolve_format(format, None))
        raise typer.Exit(EXIT_OK)
    context = get_context()
    result = index_folders(folders, options, Reporter(quiet=quiet, prefix=context.prefix if context else ""))
    exit_code = EXIT_SOME_INPUTS_FAILED if result.counts.failed else EXIT_OK
    if context is None or context.is_main:
        row = {"index": str(result.folder), **asdict(result.counts)}
        write_listing([row], tuple(row), resolve_format(format, None))
    finish(exit_code)
    raise typer.Exit(exit_code if context is None or context.is_main else EXIT_OK)
