"""The steps every image command shares: gather inputs, run the task, write records, pick the exit code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Sequence

import typer

from vitkit.discover import InputItem, discover_inputs
from vitkit.errors import EXIT_OK, EXIT_SOME_INPUTS_FAILED, UsageError
from vitkit.report import Reporter
from vitkit.writers import open_writer, resolve_format

if TYPE_CHECKING:
    from vitkit.records import RecordLayout
    from vitkit.runner import RunOptions
    from vitkit.tasks.base import Task


@dataclass(frozen=True)
class OutputOptions:
    format: str = "auto"
    output: str | None = None
    quiet: bool = False
    html: str | None = None  # contact sheet written after the run


def collect_inputs(paths: list[str] | None, files_from: str | None, null_separated: bool,
                   shard: str | None = None) -> list[InputItem]:
    if not paths and files_from is None:
        raise UsageError("no inputs given", hint="pass image files or folders, or --files-from FILE (- for stdin)")
    if null_separated and files_from is None:
        raise UsageError("-0/--null only applies to --files-from", hint="add --files-from FILE or -")
    items = discover_inputs(paths or [], files_from, null_separated)
    if not items:
        where = ", ".join(paths or []) or files_from or ""
        raise UsageError(f"no images found in {where}", hint="folders are searched for image extensions; name files directly to try others")
    if shard is not None:
        from vitkit.sharding import parse_shard, select_shard

        items = select_shard(items, parse_shard(shard))
    return items


class RecordSink(Protocol):
    """Something else that wants every record of the run (an HTML sheet, a COCO file)."""

    def add(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def run_and_write(task: "Task", items: list[InputItem], run_options: "RunOptions", out: OutputOptions,
                  sinks: Sequence[RecordSink] = ()) -> None:
    """Stream records to the chosen writer; exit 1 if any input failed, after writing all the others."""
    from vitkit.runner import run

    reporter = Reporter(quiet=out.quiet)
    fmt = resolve_format(out.format, out.output)
    sinks = [*sinks, *([ContactSheetSink(out.html, task.layout, f"model {task.model.spec.id}")] if out.html else [])]
    failed = 0
    with open_writer(fmt, out.output, task.layout) as writer:
        for record in run(task, items, run_options, reporter):
            as_dict = record.to_dict()
            writer.write(as_dict)
            failed += not record.ok
            for sink in sinks:
                sink.add(as_dict)
    for sink in sinks:
        sink.close()
    reporter.print_summary()
    raise typer.Exit(EXIT_SOME_INPUTS_FAILED if failed else EXIT_OK)


class ContactSheetSink:
    def __init__(self, path: str, layout: "RecordLayout", subtitle: str) -> None:
        self.path, self.layout, self.subtitle = path, layout, subtitle
        self.records: list[dict[str, Any]] = []

    def add(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def close(self) -> None:
        write_sheet(self.path, self.records, self.layout, self.subtitle)


def write_sheet(path: str, records: list[dict], layout: "RecordLayout", subtitle: str) -> None:
    from vitkit.viz import Tile, write_contact_sheet

    tiles = [Tile(r["path"], () if "error" in r else (layout.describe(r),), r.get("error")) for r in records]
    write_contact_sheet(path, tiles, title="vitkit results", subtitle=subtitle)
