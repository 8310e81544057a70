"""`vitkit models list | show | pull`: the catalogue, one resolved spec, and pre-downloading weights.

`list` reads only the catalogue and the cache index (no torch or model library), so it answers at once.
"""

from __future__ import annotations

import sys
import textwrap
from typing import Annotated, Any, Literal, Optional

import typer

from vitkit.cli import options as o
from vitkit.errors import EXIT_MODEL, VitkitError
from vitkit.models.cache import format_bytes, get_cached_sizes, get_hub_repo_id
from vitkit.models.registry import DEFAULT_MODELS, AmbiguousModelError, ModelSpec, list_catalogue, resolve_any
from vitkit.outputs.writers import printable, resolve_format, write_listing
from vitkit.runtime.report import Reporter

app = typer.Typer(help="List, inspect and pre-download models.", no_args_is_help=True)

Capability = Annotated[Optional[Literal["classify", "label", "search", "embed", "attention", "caption", "detect", "segment", "inpaint", "depth", "pose", "ask"]], typer.Option(
    "--task",
    help="The command the model is for (search: what index, search and dedup use); settles which library an "
         "hf-hub:/org/repo reference belongs to.")]
AllLabels = Annotated[bool, typer.Option("--labels", help="Print every class name, not only the first few.")]
_COLUMNS = ("model", "tasks", "backend", "source", "params", "cached", "description")
_UNKNOWN = "unknown without --task"
_FIRST_NAMES = 5
WIDTH = 80


def _row(spec: ModelSpec, cached: dict[str, int]) -> dict[str, Any]:
    repo = get_hub_repo_id(spec)
    defaults = sorted(cap for cap, alias in DEFAULT_MODELS.items() if alias == spec.id)
    return {
        "model": spec.id,
        "tasks": ",".join(sorted(spec.capabilities)),
        "backend": spec.backend,
        "source": spec.source,
        "params": f"{spec.params_millions:.1f}M" if spec.params_millions else None,
        "cached": format_bytes(cached[repo]) if repo in cached else ("local" if spec.is_local else "no"),
        "description": spec.description + (f" [default for {', '.join(defaults)}]" if defaults else ""),
        "hub_repo": repo,
    }


def _wrapped(text: str, indent: str) -> list[str]:
    """Lines of at most WIDTH columns, broken between words only (a long word gets a line of its own)."""
    return textwrap.wrap(text, WIDTH, initial_indent=indent, subsequent_indent=indent,
                         break_long_words=False, break_on_hyphens=False) or [indent.rstrip()]


def _print_catalogue(rows: list[dict[str, Any]]) -> None:
    """Two lines a model: the facts in columns, then the description, indented and wrapped."""
    columns = ("model", "tasks", "backend", "params", "cached")
    widths = {c: max([len(c)] + [len(str(r[c] or "")) for r in rows]) for c in columns}

    def line(values: dict[str, Any]) -> str:
        return "  ".join(str(values[c] or "").ljust(widths[c]) for c in columns).rstrip()

    out = [line({c: c for c in columns})]
    for row in rows:
        out += [line(row), *_wrapped(row["description"], "    ")]
    sys.stdout.write(printable("\n".join(out)) + "\n")


def _print_fields(row: dict[str, Any]) -> None:
    width = max(len(k) for k in row) + 2
    for key, value in row.items():
        if value is None:
            continue
        # Class names may hold commas themselves (ImageNet's "tench, Tinca tinca").
        text = printable("; ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value))
        lines = _wrapped(text, " " * width)
        sys.stdout.write(f"{key}:".ljust(width) + lines[0].lstrip() + "\n" + "".join(f"{x}\n" for x in lines[1:]))


@app.command("list")
def list_models(capability: Capability = None, format: o.Format = "auto") -> None:
    """List the built-in model aliases.

    Example: vitkit models list --task classify
    """
    cached = get_cached_sizes()
    rows = [_row(s, cached) for s in list_catalogue() if capability is None or capability in s.capabilities]
    fmt = resolve_format(format, None)
    if fmt == "table":
        _print_catalogue(rows)
    else:
        write_listing(rows, _COLUMNS, fmt)


def _class_fields(spec: ModelSpec, all_labels: bool) -> dict[str, Any]:
    """classes (count or None), class_names (the first few, or all), classes_note (why unknown, else None)."""
    from vitkit.models.backends import get_backend

    known = get_backend(spec.backend).class_names(spec)
    if known.names is None:
        return {"classes": None, "class_names": None, "classes_note": known.note}
    shown = list(known.names if all_labels else known.names[:_FIRST_NAMES])
    return {"classes": len(known.names), "class_names": shown, "classes_note": known.note or None}


def _for_reading(row: dict[str, Any]) -> dict[str, Any]:
    """A show row as `field: value` lines say it: the note in place of an unknown count, and how to see the rest."""
    shown = dict(row)
    note = shown.pop("classes_note", None)
    if shown.get("classes") is None:
        shown["classes"] = note
    elif shown.get("class_names") and len(shown["class_names"]) < shown["classes"]:
        more = shown["classes"] - len(shown["class_names"])
        shown["class_names"] = [*shown["class_names"], f"... {more} more (--labels shows all)"]
    return shown


@app.command("show")
def show(name: Annotated[str, typer.Argument(help="Alias, library reference or local folder.")],
         capability: Capability = None, all_labels: AllLabels = False, format: o.Format = "auto") -> None:
    """Show what a model reference resolves to, and the class names it predicts.

    Example: vitkit models show vit-b16 --labels
    """
    try:
        spec = resolve_any(name, capability)
    except AmbiguousModelError:
        row: dict[str, Any] = {"model": name, "tasks": _UNKNOWN, "backend": _UNKNOWN, "source": name,
                               "classes": None, "class_names": None, "classes_note": _UNKNOWN}
    else:
        row = {**_row(spec, get_cached_sizes()), **_class_fields(spec, all_labels)}
    fmt = resolve_format(format, None)
    if fmt == "table":
        _print_fields(_for_reading(row))
    else:
        write_listing([row], tuple(row), fmt)


@app.command("pull")
def pull(names: Annotated[list[str], typer.Argument(help="Aliases or references to download.")],
         capability: Capability = None, offline: o.Offline = False, quiet: o.Quiet = False) -> None:
    """Download models into the Hugging Face cache so later runs work offline.

    Example: vitkit models pull vit-b16 clip-b32
    """
    from vitkit.models.pull import pull_model

    reporter = Reporter(quiet=quiet)
    failed = 0
    for name in names:
        try:
            spec = pull_model(name, capability, offline)
        except VitkitError as exc:
            failed += 1
            reporter.message(f"error: {exc.one_line()}")  # each error names the model
            continue
        reporter.message(f"ready: {spec.describe_source()}")
    raise typer.Exit(EXIT_MODEL if failed else 0)
