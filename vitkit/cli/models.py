"""`vitkit models list | show | pull`: the catalogue, one resolved spec, and pre-downloading weights."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

import typer

from vitkit.models.cache import format_bytes, get_cached_sizes, get_hub_repo_id
from vitkit.cli import options as o
from vitkit.errors import EXIT_MODEL, ModelNotCachedError, VitkitError
from vitkit.models.registry import DEFAULT_MODELS, ModelSpec, list_catalogue, resolve_any
from vitkit.runtime.report import Reporter
from vitkit.outputs.writers import resolve_format, write_listing

app = typer.Typer(help="List, inspect and pre-download models.", no_args_is_help=True)

Capability = Annotated[Optional[Literal["classify", "zeroshot", "embed", "caption", "detect", "segment", "inpaint"]], typer.Option(
    "--task",
    help="What the model is for; settles which library an hf-hub:/org/repo reference belongs to.")]
_COLUMNS = ("model", "tasks", "backend", "source", "params", "cached", "description")


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


@app.command("list")
def list_models(capability: Capability = None, format: o.Format = "auto") -> None:
    """List the built-in model aliases.

    Example: vitkit models list --task classify
    """
    cached = get_cached_sizes()
    specs = [s for s in list_catalogue() if capability is None or capability in s.capabilities]
    write_listing([_row(s, cached) for s in specs], _COLUMNS, resolve_format(format, None))


@app.command("show")
def show(name: Annotated[str, typer.Argument(help="Alias, library reference or local folder.")],
         capability: Capability = None, format: o.Format = "auto") -> None:
    """Show what a model reference resolves to.

    Example: vitkit models show vit-b16
    """
    row = _row(resolve_any(name, capability), get_cached_sizes())
    fmt = resolve_format(format, None)
    if fmt == "table":
        write_listing([{"field": k, "value": v} for k, v in row.items()], ("field", "value"), fmt)
    else:
        write_listing([row], tuple(row), fmt)


@app.command("pull")
def pull(names: Annotated[list[str], typer.Argument(help="Aliases or references to download.")],
         capability: Capability = None, quiet: o.Quiet = False) -> None:
    """Download models into the Hugging Face cache so later runs work offline.

    Example: vitkit models pull vit-b16 clip-b32
    """
    from vitkit.models.loading import load_model

    reporter = Reporter(quiet=quiet)
    failed = 0
    for name in names:
        try:
            spec = resolve_any(name, capability)
            load_model(spec, capability or min(spec.capabilities, default=""), device="cpu", precision="fp32")
        except ModelNotCachedError:
            failed += 1
            reporter.message(f"error: cannot download {name}: the Hugging Face Hub cannot be reached "
                             "(check the network, HF_ENDPOINT and proxy settings)")
            continue
        except VitkitError as exc:
            failed += 1
            reporter.message(f"error: {name}: {exc.one_line()}")
            continue
        reporter.message(f"ready: {spec.describe_source()}")
    raise typer.Exit(EXIT_MODEL if failed else 0)
