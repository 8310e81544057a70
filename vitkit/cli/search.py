"""`vitkit search`: text or image queries against the index, updating it from the given folders first."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from vitkit.cli.index import Folders, IndexDir, Rebuild, Wait
from vitkit.cli.options import command, threshold_option
from vitkit.errors import UsageError
from vitkit.retrieval.jobs import run_search
from vitkit.pipeline import BatchOptions, ModelOptions, OutputOptions, write_paths, write_rows

Text = Annotated[Optional[str], typer.Option("--text", "-t", help="Find images matching this text.")]
ImageQuery = Annotated[Optional[str], typer.Option("--image", "-i", metavar="FILE", help="Find images like this one.")]
TopK = Annotated[int, typer.Option("--top-k", "-k", min=1, help="How many results.")]
Threshold = threshold_option("Drop results with a lower cosine score.")
PathsOnly = Annotated[bool, typer.Option("--paths-only", help="Print bare paths, one a line, to pipe into other commands.")]
MinScore = Annotated[Optional[float], typer.Option(
    "--min-score", metavar="SCORE", help="After ranking, drop hits with a lower cosine; nothing left prints nothing "
    "(and a note on stderr).")]
Relative = Annotated[Optional[float], typer.Option(
    "--relative", metavar="MARGIN", help="After ranking, keep only hits scoring within MARGIN of the best one.")]
CollapseDuplicates = Annotated[bool, typer.Option(
    "--collapse-duplicates", help="One hit per group of duplicates (as `vitkit dedup` groups them, among the "
    "hits); JSON records list the others under `duplicates`.")]
Exact = Annotated[bool, typer.Option(
    "--exact", help="Score every indexed image instead of searching approximately (as indexes of 100,000 "
                    "images and more are; results are re-ranked exactly either way).")]
Print0 = Annotated[bool, typer.Option("--print0", help="With --paths-only: end each path with NUL, not a newline (for xargs -0).")]


@command(omit=("resume",))
def search(folders: Folders = None, text: Text = None, image: ImageQuery = None, top_k: TopK = 10,
           threshold: Threshold = None, min_score: MinScore = None, relative: Relative = None,
           collapse_duplicates: CollapseDuplicates = False, exact: Exact = False, paths_only: PathsOnly = False,
           print0: Print0 = False,
           index_dir: IndexDir = None, rebuild: Rebuild = False, wait: Wait = 0.0, *, model: ModelOptions,
           batch: BatchOptions, out: OutputOptions) -> int:
    """Search indexed images by text or by example image; given folders are indexed (incrementally) first.

    Example: vitkit search --text "a dog on a beach" ~/Pictures -k 5
    """
    if print0 and not paths_only:
        raise UsageError("--print0 goes with --paths-only")
    listing = run_search(text, image, folders or [], model, batch, top_k=top_k, threshold=threshold,
                         min_score=min_score, relative=relative, collapse_duplicates=collapse_duplicates,
                         index_dir=index_dir, rebuild=rebuild, wait=wait, html=out.html, quiet=out.quiet,
                         exact=exact)
    return write_paths(listing, out.output, "\0" if print0 else "\n") if paths_only else write_rows(listing, out)
