"""`vitkit index`: build or update the embedded CLIP index of folders."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from vitkit.cli.options import Shard, command
from vitkit.retrieval.jobs import run_index
from vitkit.pipeline import BatchOptions, ModelOptions, OutputOptions, write_rows

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


@command(omit=("output", "html", "resume"))
def index(folders: Folders = None, index_dir: IndexDir = None, rebuild: Rebuild = False, merge_from: MergeFrom = None,
          wait: Wait = 0.0, compact: Compact = False, failed: Failed = False, shard: Shard = None, *, model: ModelOptions, batch: BatchOptions,
          out: OutputOptions) -> int:
    """Embed images into an on-disk index; reruns only embed what changed.

    Example: vitkit index ~/Pictures && vitkit search --text "a dog on a beach"
    """
    listing = run_index(folders, model, batch, index_dir=index_dir, rebuild=rebuild, merge_from=merge_from,
                        wait=wait, shard=shard, compact=compact, failed=failed, quiet=out.quiet)
    return write_rows(listing, out)
