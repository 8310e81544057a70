"""`vitkit search`: text or image queries against the index, updating it from the given folders first."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from vitkit.cli import options as o
from vitkit.cli.index import Folders, IndexDir, Rebuild, Wait
from vitkit.errors import EXIT_OK, EXIT_SOME_INPUTS_FAILED, UsageError

Text = Annotated[Optional[str], typer.Option("--text", "-t", help="Find images matching this text.")]
ImageQuery = Annotated[Optional[str], typer.Option("--image", "-i", metavar="FILE", help="Find images like this one.")]
TopK = Annotated[int, typer.Option("--top-k", "-k", min=1, help="How many results.")]
Threshold = Annotated[Optional[float], typer.Option("--threshold", help="Drop results with a lower cosine score.")]
PathsOnly = Annotated[bool, typer.Option("--paths-only", help="Print bare paths, one a line, to pipe into other commands.")]
NullOut = Annotated[bool, typer.Option("-0", "--null", help="With --paths-only: NUL-separated (for xargs -0).")]


def search(
    folders: Folders = None,
    text: Text = None,
    image: ImageQuery = None,
    top_k: TopK = 10,
    threshold: Threshold = None,
    paths_only: PathsOnly = False,
    null: NullOut = False,
    index_dir: IndexDir = None,
    model: o.Model = None,
    rebuild: Rebuild = False,
    wait: Wait = 0.0,
    html: o.Html = None,
    format: o.Format = "auto",
    output: o.Output = None,
    device: o.Device = "auto",
    precision: o.Precision = "auto",
    batch_size: o.BatchSize = None,
    workers: o.Workers = None,
    no_draft: o.NoDraft = False,
    offline: o.Offline = False,
    compile_model: o.Compile = False,
    quiet: o.Quiet = False,
) -> None:
    """Search indexed images by text or by example image; given folders are indexed (incrementally) first.

    Example: vitkit search --text "a dog on a beach" ~/Pictures -k 5
    """
    from vitkit.cli.common import write_sheet
    from vitkit.runtime.distributed import refuse_launch
    from vitkit.retrieval.update import IndexOptions
    from vitkit.runtime.report import Reporter
    from vitkit.runtime.options import RunOptions
    from vitkit.retrieval.search import SEARCH_LAYOUT, search_images
    from vitkit.outputs.writers import open_output, open_writer, resolve_format

    refuse_launch("search", "build the index under torchrun (`vitkit index`), then search in one process")

    if bool(text) == bool(image):
        raise UsageError("give one query: --text 'a dog on a beach' or --image FILE")
    if null and not paths_only:
        raise UsageError("-0/--null goes with --paths-only")
    options = IndexOptions(index_dir, model, rebuild, wait, device, precision, offline,
                           RunOptions(batch_size, workers, not no_draft), compile_model)
    result = search_images(text, image, folders or [], top_k, threshold, options, Reporter(quiet=quiet))
    records = [{"rank": rank, "path": hit.path, "score": hit.score} for rank, hit in enumerate(result.hits, 1)]
    if paths_only:
        with open_output(output) as stream:
            stream.write("".join(r["path"] + ("\0" if null else "\n") for r in records))
    else:
        with open_writer(resolve_format(format, output), output, SEARCH_LAYOUT) as writer:
            for record in records:
                writer.write(record)
    if html:
        write_sheet(html, records, SEARCH_LAYOUT, f"query: {text or image}")
    raise typer.Exit(EXIT_SOME_INPUTS_FAILED if result.counts.failed else EXIT_OK)
