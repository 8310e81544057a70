"""`vitkit caption`: captions from a CoCa model, as records and optionally as `<image stem>.txt` files."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

import typer

from vitkit.cli import options as o
from vitkit.cli.common import OutputOptions, collect_inputs, run_and_write
from vitkit.errors import UsageError
from vitkit.models.registry import CAPTION, resolve

MaxLength = Annotated[Optional[int], typer.Option(
    "--max-length", min=2, show_default=False,
    help="Longest caption in tokens, counting the start token and --prefix (a token is about 3/4 of a word). "
         "Default 30, or the model's context length if shorter.")]
Beams = Annotated[Optional[int], typer.Option(
    "--beams", min=1, show_default=False,
    help="Beam search width. Default 3 (open_clip uses 6, in 3 diverse groups); on CPU 3 beams take about "
         "1.5x the time of --greedy, 6 beams about 2x.")]
Greedy = Annotated[bool, typer.Option(
    "--greedy", help="Greedy decoding (as --beams 1): the fastest, slightly plainer captions.")]
Prefix = Annotated[Optional[str], typer.Option(
    "--prefix", metavar="TEXT", help="Start every caption with TEXT and let the model continue it.")]
Sidecar = Annotated[bool, typer.Option(
    "--sidecar", help="Also write each caption to a text file beside its image: photos/cat.jpg -> photos/cat.txt.")]
OnExists = Annotated[Optional[Literal["skip", "overwrite"]], typer.Option(
    "--on-exists", show_default=False,
    help="With --sidecar, for images whose caption file exists: skip (default; no record, no model run) or overwrite.")]


def caption(
    inputs: o.Inputs = None,
    model: o.Model = None,
    max_length: MaxLength = None,
    beams: Beams = None,
    greedy: Greedy = False,
    prefix: Prefix = None,
    sidecar: Sidecar = False,
    on_exists: OnExists = None,
    files_from: o.FilesFrom = None,
    null: o.NullSeparated = False,
    format: o.Format = "auto",
    output: o.Output = None,
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
    """Caption images with a CoCa model (default: coca-b32), by beam search (3 beams) or --greedy.

    Example: vitkit caption photos/ --sidecar
    """
    from vitkit.runtime.distributed import is_launched
    from vitkit.models.loading import load_model
    from vitkit.runtime.report import Reporter
    from vitkit.runtime.runner import RunOptions
    from vitkit.tasks.caption import CaptionTask, SidecarWriter, plan_sidecars, resolve_beams

    if on_exists and not sidecar:
        raise UsageError("--on-exists only applies with --sidecar")
    num_beams, reporter = resolve_beams(beams, greedy), Reporter(quiet=quiet)
    items = collect_inputs(inputs, files_from, null, shard)
    if sidecar:
        plan = plan_sidecars(items, overwrite=on_exists == "overwrite")
        items = plan.items
        if message := plan.skipped_message():
            reporter.message(message)
        if not items and not is_launched():  # under torchrun every rank must still join the gather
            raise typer.Exit(0)
    loaded = load_model(resolve(model, CAPTION), CAPTION, device, precision, offline, compile=compile_model)
    task = CaptionTask(loaded, max_length, num_beams, prefix)
    run_and_write(task, items, RunOptions(batch_size, workers, not no_draft, max_pixels),
                  OutputOptions(format, output, quiet), sinks=[SidecarWriter(reporter)] if sidecar else [])
