"""`vitkit caption`: captions from a CoCa model or a vision-language model, as records and optionally as `<image stem>.txt` files."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

import typer

from vitkit.cli.options import ProcessorOption, command
from vitkit.jobs import plan_caption
from vitkit.pipeline import BatchOptions, InputOptions, ModelOptions, OutputOptions, execute

MaxLength = Annotated[Optional[int], typer.Option(
    "--max-length", min=2, show_default=False,
    help="Longest caption in tokens, counting the start token and --prefix (a token is about 3/4 of a word). "
         "Default 30, or the model's context length if shorter. With --detail's models it counts new tokens.")]
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
Detail = Annotated[Optional[Literal["brief", "detailed", "paragraph"]], typer.Option(
    "--detail", show_default=False,
    help="For a vision-language --model (e.g. smolvlm-256m): brief asks 'Describe this image in one sentence.' "
         "(default), detailed 'Describe this image in detail.', paragraph 'Describe this image in a paragraph.'; "
         "--max-length then counts new tokens (default 64). Florence-2 (florence-2-b) runs its own tasks: "
         "<CAPTION>, <DETAILED_CAPTION>, <MORE_DETAILED_CAPTION>, by beam search (--beams, default 3).")]


@command()
def caption(inputs: InputOptions, max_length: MaxLength = None, beams: Beams = None, greedy: Greedy = False,
            prefix: Prefix = None, sidecar: Sidecar = False, on_exists: OnExists = None, detail: Detail = None,
            processor_option: ProcessorOption = None, *,
            model: ModelOptions, batch: BatchOptions, out: OutputOptions) -> int:
    """Caption images with a CoCa model (default: coca-b32), by beam search (3 beams) or --greedy, with a
    vision-language model asked to describe each image (--model smolvlm-256m --detail brief|detailed|paragraph),
    or with Florence-2's own captioning tasks (--model florence-2-b).

    Example: vitkit caption photos/ --sidecar
    """
    job = plan_caption(inputs, model, batch, max_length=max_length, beams=beams, greedy=greedy, prefix=prefix,
                       sidecar=sidecar, on_exists=on_exists, html=out.html, quiet=out.quiet, detail=detail,
                       processor_option=processor_option)
    return execute(job, out)
