"""`vitkit dedup`: groups of duplicate images, each naming the file to keep; vitkit itself never deletes."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from vitkit.cli.index import Folders, IndexDir, Rebuild, Wait
from vitkit.cli.options import command, threshold_option
from vitkit.cli.search import PathsOnly, Print0
from vitkit.errors import UsageError
from vitkit.retrieval.jobs import run_dedup
from vitkit.outputs.groups import removable_rows
from vitkit.pipeline import BatchOptions, Listing, ModelOptions, OutputOptions, write_paths, write_rows

Threshold = threshold_option("Embedding cosine at or above which two images are `similar` (default 0.97; "
                             "above 1 turns the tier off).")
Keep = Annotated[Literal["largest", "oldest", "newest", "shortest-path"], typer.Option(
    "--keep", help="Which file of a group to keep: largest (pixels, then bytes), oldest or newest (mtime), "
    "or shortest-path.")]


@command(omit=("resume",))
def dedup(folders: Folders = None, threshold: Threshold = None, keep: Keep = "largest", paths_only: PathsOnly = False,
          print0: Print0 = False, index_dir: IndexDir = None, rebuild: Rebuild = False, wait: Wait = 0.0, *,
          model: ModelOptions, batch: BatchOptions, out: OutputOptions) -> int:
    """Find duplicate images (exact copies, near copies, similar shots); given folders are indexed first.

    Example: vitkit dedup ~/Pictures --paths-only --print0 | xargs -0 mv --target-directory ~/duplicates/
    """
    if print0 and not paths_only:
        raise UsageError("--print0 goes with --paths-only")
    listing = run_dedup(folders or [], model, batch, threshold=threshold, keep=keep, index_dir=index_dir,
                        rebuild=rebuild, wait=wait, html=out.html, quiet=out.quiet)
    if paths_only:
        return write_paths(Listing(removable_rows(listing.rows), listing.failed), out.output, "\0" if print0 else "\n")
    return write_rows(listing, out)
