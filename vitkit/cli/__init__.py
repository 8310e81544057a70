"""The command-line client. This is the one place where exceptions become messages and exit codes."""

from __future__ import annotations

import os
import sys
import traceback
from typing import Annotated, Any, Callable, Optional, get_args

import typer
from typer.core import TyperArgument, TyperGroup, TyperOption

from vitkit import __version__
from vitkit.errors import EXIT_USAGE, VitkitError


def _print_error(text: str) -> None:
    from vitkit.runtime.distributed import stderr_prefix

    typer.echo(f"{stderr_prefix()}vitkit: error: {text}", err=True)


def _silence_stdout() -> None:
    """After the reader of a pipe goes away (`| head`), stop Python complaining as it flushes at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def _report(exc: VitkitError) -> None:
    """vitkit's one error line, after the traceback behind it when VITKIT_DEBUG is set."""
    if os.environ.get("VITKIT_DEBUG", "").strip().lower() not in ("", "0", "false", "no", "off"):
        traceback.print_exception(exc, file=sys.stderr)
    _print_error(exc.one_line())


class _PlainArgument(TyperArgument):
    def display_type_rich(self, ctx: Any) -> str | None:
        return None  # the argument's name says it; Typer would add a Python type such as <list[str]>


def _metavar(param: TyperOption) -> str:
    described = param.type_descriptor
    if described.choices:
        return "|".join(map(str, described.choices))
    kind = get_args(described.annotation)[0] if described.is_list else described.annotation
    return {int: "N", float: "NUMBER"}.get(kind, "TEXT")


def _without_type(get_help_option: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def get(ctx: Any) -> Any:
        option = get_help_option(ctx)  # made afresh for each help page
        if option is not None:
            option.metavar = ""
        return option

    return get


def plain_metavars(command: Any) -> None:
    """Help in click's words rather than Python's: flags show no type, values an upper-case name
    (Typer otherwise prints `<bool>`, `<list[str]>`, `<str>`)."""
    command.get_help_option = _without_type(command.get_help_option)
    for param in command.params:
        if isinstance(param, TyperOption) and param.metavar is None:
            param.metavar = "" if param.is_flag else _metavar(param)
        elif isinstance(param, TyperArgument):
            param.__class__ = _PlainArgument
            if param.nargs != 1:  # Typer would show "inputs..." beside "[INPUTS]..." in the usage line
                param.metavar = param.metavar or param.name.upper()
    for sub in getattr(command, "commands", {}).values():
        plain_metavars(sub)


class VitkitGroup(TyperGroup):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        plain_metavars(self)

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VitkitError as exc:
            _report(exc)
            ctx.exit(exc.exit_code)
        except BrokenPipeError:
            _silence_stdout()
            ctx.exit(0)
        except KeyboardInterrupt:
            _print_error("interrupted")
            ctx.exit(130)


app = typer.Typer(
    cls=VitkitGroup,
    name="vitkit",
    help="Vision transformers for folders of images.\n\nExample: vitkit classify photos/ --top-k 3",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"vitkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[Optional[bool], typer.Option(
        "--version", callback=_show_version, is_eager=True, help="Show the version and exit.")] = None) -> None:
    """Vision transformers for folders of images.

    Example: vitkit classify photos/ --top-k 3
    """


def _register() -> None:
    from vitkit.cli import evaluate, models
    from vitkit.cli.ask import ask
    from vitkit.cli.attention import attention
    from vitkit.cli.bench import bench
    from vitkit.cli.caption import caption
    from vitkit.cli.classify import classify
    from vitkit.cli.dedup import dedup
    from vitkit.cli.depth import depth
    from vitkit.cli.detect import detect
    from vitkit.cli.embed import embed
    from vitkit.cli.index import index
    from vitkit.cli.inpaint import inpaint
    from vitkit.cli.label import label
    from vitkit.cli.pose import pose
    from vitkit.cli.search import search
    from vitkit.cli.segment import segment

    app.command("classify", no_args_is_help=True)(classify)
    app.command("ask", no_args_is_help=True)(ask)
    app.command("attention", no_args_is_help=True)(attention)
    app.command("bench")(bench)
    app.command("caption", no_args_is_help=True)(caption)
    app.command("dedup", no_args_is_help=True)(dedup)
    app.command("depth", no_args_is_help=True)(depth)
    app.command("detect", no_args_is_help=True)(detect)
    app.command("embed", no_args_is_help=True)(embed)
    app.command("label", no_args_is_help=True)(label)
    app.command("pose", no_args_is_help=True)(pose)
    app.command("index", no_args_is_help=True)(index)
    app.command("inpaint", no_args_is_help=True)(inpaint)
    app.command("search", no_args_is_help=True)(search)
    app.command("segment", no_args_is_help=True)(segment)
    app.add_typer(models.app, name="models")
    app.add_typer(evaluate.app, name="eval")


_register()


def main() -> None:
    try:
        app()
    except BrokenPipeError:
        _silence_stdout()
        sys.exit(0)
    except VitkitError as exc:  # raised outside a command, e.g. while parsing
        _report(exc)
        sys.exit(exc.exit_code if exc.exit_code else EXIT_USAGE)
