"""`vitkit ask`: questions about images answered by a vision-language model, free-form or by scored choices."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from vitkit.cli.options import ProcessorOption, command, threshold_option
from vitkit.cli.search import PathsOnly, Print0
from vitkit.errors import UsageError
from vitkit.jobs import plan_ask
from vitkit.pipeline import BatchOptions, InputOptions, ModelOptions, OutputOptions, execute

Question = Annotated[Optional[list[str]], typer.Option(
    "--question", "-Q", metavar="TEXT", help="A question about each image; repeat to ask several.")]
QuestionsFile = Annotated[Optional[str], typer.Option(
    "--questions-file", metavar="FILE", help="Questions, one a line ('#' comments), after any --question.")]
System = Annotated[Optional[str], typer.Option(
    "--system", metavar="TEXT", help="A system prompt before each question (none by default).")]
Choices = Annotated[Optional[str], typer.Option(
    "--choices", metavar="A,B,...", help="Score these answers by the model's likelihood instead of generating: "
    "records get each choice's probability, and the likeliest as the answer.")]
Keep = Annotated[Optional[str], typer.Option(
    "--keep", metavar="CHOICE", help="With --choices: records get `match`, true where CHOICE's probability is at "
    "least --threshold for every question; with --paths-only only matching images are printed.")]
Threshold = threshold_option("The probability --keep's choice needs (default 0.5).")
MaxNewTokens = Annotated[int, typer.Option("--max-new-tokens", min=1, help="Longest answer, in tokens.")]
Temperature = Annotated[Optional[float], typer.Option(
    "--temperature", min=0.0, metavar="T", help="Sample answers at this temperature instead of greedy decoding.")]
Seed = Annotated[Optional[int], typer.Option("--seed", help="With --temperature: the random seed (default 0).")]


@command(omit=("resume",))
def ask(inputs: InputOptions, question: Question = None, questions_file: QuestionsFile = None, system: System = None,
        choices: Choices = None, keep: Keep = None, threshold: Threshold = None, max_new_tokens: MaxNewTokens = 64,
        temperature: Temperature = None, seed: Seed = None, paths_only: PathsOnly = False, print0: Print0 = False,
        processor_option: ProcessorOption = None, *, model: ModelOptions, batch: BatchOptions, out: OutputOptions) -> int:
    """Ask questions about images with a vision-language model (default: smolvlm-256m), greedy by default.

    Example: vitkit ask photos/ --question "Is there a cat?" --choices yes,no --keep yes --paths-only
    """
    if print0 and not paths_only:
        raise UsageError("--print0 goes with --paths-only")
    if paths_only and keep is None:
        raise UsageError("--paths-only prints the images that --keep's choice matches", hint="add --choices and --keep")
    job = plan_ask(inputs, model, batch, question=question, questions_file=questions_file, system=system,
                   choices=choices, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, keep=keep,
                   threshold=threshold, html=out.html, processor_option=processor_option)
    if paths_only:
        from vitkit.outputs.matches import write_matching_paths

        return write_matching_paths(job, out.output, "\0" if print0 else "\n", out.quiet)
    return execute(job, out)
