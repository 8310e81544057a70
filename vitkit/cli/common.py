"""The steps every image command shares: gather inputs, run the task, write records, pick the exit code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Protocol, Sequence

import typer

from vitkit.inputs.discover import InputItem, discover_inputs
from vitkit.errors import EXIT_OK, EXIT_SOME_INPUTS_FAILED, UsageError
from vitkit.runtime.report import Reporter
from vitkit.outputs.writers import open_writer, resolve_format

if TYPE_CHECKING:
    from vitkit.runtime.distributed import RankContext
    from vitkit.outputs.records import RecordLayout
    from vitkit.runtime.runner import RunOptions
    from vitkit.tasks.base import Task



@dataclass(frozen=True)
class OutputOptions:
    format: str = "auto"
    output: str | None = None
    quiet: bool = False
    html: str | None = None  # contact sheet written after the run


def collect_inputs(paths: list[str] | None, files_from: str | None, null_separated: bool,
                   shard: str | None = None) -> list[InputItem]:
    """The inputs this process works on: all of them, --shard's slice, and under torchrun this rank's
    part of that. Under torchrun only rank 0 discovers them (stdin can be read once, and a folder
    changing mid-scan must not give ranks different lists) and sends the list to the others."""
    from vitkit.runtime.distributed import get_context
    from vitkit.runtime.sharding import apply_shard

    context = get_context()
    if context is None:
        items = discover_all(paths, files_from, null_separated)
    elif context.is_main:
        try:
            items = discover_all(paths, files_from, null_separated)
        except BaseException:
            context.broadcast(None)  # the other ranks stop too instead of waiting for a list
            raise
        context.broadcast(items)
    else:
        items = context.broadcast(None)
        if items is None:
            raise UsageError("rank 0 could not gather the inputs", hint="its error is on stderr")
    items = apply_shard(items, shard)
    return context.shard(items) if context is not None else items


def discover_all(paths: list[str] | None, files_from: str | None, null_separated: bool) -> list[InputItem]:
    if not paths and files_from is None:
        raise UsageError("no inputs given", hint="pass image files or folders, or --files-from FILE (- for stdin)")
    if null_separated and files_from is None:
        raise UsageError("-0/--null only applies to --files-from", hint="add --files-from FILE or -")
    items = discover_inputs(paths or [], files_from, null_separated)
    if not items:
        where = ", ".join(paths or []) or files_from or ""
        raise UsageError(f"no images found in {where}", hint="folders are searched for image extensions; name files directly to try others")
    return items


class RecordSink(Protocol):
    """Something else that wants every record of the run (an HTML sheet, a COCO file). A sink with a true
    `per_input` attribute handles each record on its own (caption sidecars): under torchrun it runs on the
    rank that made the record; the others run on rank 0 with every record."""

    def add(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def run_and_write(task: "Task", items: list[InputItem], run_options: "RunOptions", out: OutputOptions,
                  sinks: Sequence[RecordSink] = ()) -> None:
    """Stream records to the chosen writer; exit 1 if any input failed, after writing all the others.
    Under torchrun `items` is this rank's part and rank 0 writes every rank's records."""
    from vitkit.runtime.distributed import finish, get_context

    context = get_context()
    sinks = [*sinks, *([ContactSheetSink(out.html, task.layout, f"model {task.model.spec.id}")] if out.html else [])]
    local_sinks = [s for s in sinks if getattr(s, "per_input", False)]
    main_sinks = [s for s in sinks if s not in local_sinks]
    if context is None:
        reporter = Reporter(quiet=out.quiet)
        failed = _write_all(_run_records(task, items, run_options, reporter, local_sinks), out, task, main_sinks)
    else:
        reporter = Reporter(quiet=out.quiet, progress=None if context.is_main else False,
                            prefix=context.prefix)
        failed = _run_on_rank(context, task, items, run_options, out, reporter, local_sinks, main_sinks)
    # Other ranks exit 0: their failures are on their stderr and in rank 0's summary and exit code.
    exit_code = EXIT_SOME_INPUTS_FAILED if failed else EXIT_OK
    if context is None or context.is_main:
        reporter.print_summary()
    # Before closing per-input sinks: one that raises must not make torchrun stop rank 0 mid-write.
    finish(exit_code)
    _close(local_sinks)
    raise typer.Exit(exit_code)


def _run_records(task: "Task", items: list[InputItem], run_options: "RunOptions", reporter: Reporter,
                 local_sinks: Sequence[RecordSink]) -> Iterator[dict[str, Any]]:
    from vitkit.runtime.runner import run

    for record in run(task, items, run_options, reporter):
        as_dict = record.to_dict()
        for sink in local_sinks:
            sink.add(as_dict)
        yield as_dict


def _write_all(records: Iterable[dict[str, Any]], out: OutputOptions, task: "Task",
               sinks: Sequence[RecordSink]) -> int:
    """Write records and feed the sinks; returns how many were failures."""
    failed = 0
    with open_writer(resolve_format(out.format, out.output), out.output, task.layout) as writer:
        for record in records:
            writer.write(record)
            failed += "error" in record
            for sink in sinks:
                sink.add(record)
    _close(sinks)
    return failed


def _run_on_rank(context: "RankContext", task: "Task", items: list[InputItem], run_options: "RunOptions",
                 out: OutputOptions, reporter: Reporter, local_sinks: Sequence[RecordSink],
                 main_sinks: Sequence[RecordSink]) -> int:
    """Rank 0 streams its own records (the first slice) as they come, then the other ranks' in rank
    order once they are done; the other ranks only send theirs. Returns the job's failure count."""
    records = _run_records(task, items, run_options, reporter, local_sinks)
    if not context.is_main:
        context.gather((list(records), reporter.failures, len(items)))
        return 0

    def job_records() -> Iterator[dict[str, Any]]:
        yield from records
        gathered = context.gather(None) or []
        for other_records, failures, total in gathered[1:]:
            reporter.failures.update(failures)
            reporter.total += total
            yield from other_records

    return _write_all(job_records(), out, task, main_sinks)


def _close(sinks: Sequence[RecordSink]) -> None:
    for sink in sinks:
        sink.close()


class ContactSheetSink:
    def __init__(self, path: str, layout: "RecordLayout", subtitle: str) -> None:
        self.path, self.layout, self.subtitle = path, layout, subtitle
        self.records: list[dict[str, Any]] = []

    def add(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def close(self) -> None:
        write_sheet(self.path, self.records, self.layout, self.subtitle)


def write_sheet(path: str, records: list[dict], layout: "RecordLayout", subtitle: str) -> None:
    from vitkit.outputs.html import tile_for_record, write_contact_sheet

    tiles = [tile_for_record(r, layout.describe) for r in records]
    write_contact_sheet(path, tiles, title="vitkit results", subtitle=subtitle)
