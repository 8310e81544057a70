"""Inputs -> run -> sinks, for the library and the command line alike.

A `Job` is a task with its inputs, run options and sinks (contact sheet, COCO file, caption
sidecars). `iterate` yields its records lazily (the library's view); `execute` streams them to a
writer, gathers every torchrun rank's records on rank 0 and returns the exit status (the CLI's view).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Protocol, Sequence, Union

from vitkit.errors import EXIT_OK, EXIT_SOME_INPUTS_FAILED, UsageError
from vitkit.inputs.decode import DEFAULT_MAX_PIXELS
from vitkit.inputs.discover import InputItem, discover_inputs
from vitkit.outputs.resume import check_resumable, open_appending_writer, prepare_resume, read_kept_records
from vitkit.outputs.writers import open_output, open_writer, resolve_format, write_listing
from vitkit.runtime.report import Reporter

if TYPE_CHECKING:
    from PIL.Image import Image

    from vitkit.models.loading import LoadedModel
    from vitkit.outputs.records import Record, RecordLayout
    from vitkit.runtime.distributed import RankContext
    from vitkit.runtime.options import RunOptions
    from vitkit.tasks.base import Task

# What the library's functions take as inputs: a path, folder or glob, a PIL image, or a list of those.
Source = Union[str, "os.PathLike[str]", "Image"]


@dataclass(frozen=True)
class InputOptions:
    inputs: Sequence[Source] | Source | None = None
    files_from: str | None = None  # a file of paths, one a line; "-" reads stdin
    null: bool = False  # files_from is NUL-separated
    shard: str | None = None  # "I/N": only that contiguous slice of the inputs


@dataclass(frozen=True)
class ModelOptions:
    model: "str | LoadedModel | None" = None  # None: the command's default model
    device: str = "auto"  # auto, cpu, cuda, cuda:N or mps
    precision: str = "auto"  # auto, fp32, fp16, bf16 or int8
    offline: bool = False
    compile: bool = False

    @property
    def reference(self) -> str | None:
        """The model as a reference, for code that resolves it again (the index records it)."""
        return self.model if self.model is None or isinstance(self.model, str) else self.model.spec.id

    def backend(self, capability: str, default: str | None = None) -> str:
        """The library that runs the model (timm, open_clip, transformers), known before loading it."""
        from vitkit.models.registry import resolve

        if self.model is not None and not isinstance(self.model, str):
            return self.model.spec.backend
        return resolve(self.model or default, capability).backend

    def load(self, capability: str, default: str | None = None) -> "LoadedModel":
        from vitkit.models.loading import load_model
        from vitkit.models.registry import resolve

        if self.model is not None and not isinstance(self.model, str):
            return self.model  # loaded already (vitkit.load_model); the task checks it can do the job
        spec = resolve(self.model or default, capability)
        return load_model(spec, capability, self.device, self.precision, self.offline, compile=self.compile)


@dataclass(frozen=True)
class BatchOptions:
    batch_size: int | None = None  # None: the command's own default, 4x on a GPU
    workers: int | None = None  # decoding processes; None: suited to this machine
    draft: bool = True  # reduced-scale JPEG decoding where the model needs far fewer pixels
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger images are that input's error

    def run_options(self, default_batch_size: int = 16) -> "RunOptions":
        from vitkit.runtime.options import RunOptions

        return RunOptions(self.batch_size, self.workers, self.draft, self.max_pixels, default_batch_size)


@dataclass(frozen=True)
class OutputOptions:
    format: str = "auto"
    output: str | None = None
    quiet: bool = False
    html: str | None = None  # contact sheet written after the run
    resume: bool = False  # append to `output`, skipping inputs an earlier run completed there

    def check(self) -> None:
        """What can be refused before a model loads: an unknown `-o` extension or format, and a `--resume`
        the output cannot continue (a CSV row is not a whole record, so an HTML sheet cannot be rebuilt
        from the rows an earlier run kept)."""
        fmt = resolve_format(self.format, self.output)
        if self.resume:
            check_resumable(fmt, self.output)
            if self.html and fmt != "jsonl":
                raise UsageError(f"--resume with --html needs JSON lines output to rebuild {self.html} from",
                                 hint="write -o results.jsonl, or drop --html")


def split_options(options: dict[str, Any], *groups: type) -> list[Any]:
    """Keyword options of a library call -> one object per option class; a name none of them has is a TypeError."""
    left = dict(options)
    packed = []
    for group in groups:
        names = {f.name for f in fields(group)}
        packed.append(group(**{k: left.pop(k) for k in list(left) if k in names}))
    if left:
        raise TypeError(f"unexpected option(s): {', '.join(sorted(left))}")
    return packed


class RecordSink(Protocol):
    """Something else that wants every record of the run (an HTML sheet, a COCO file). A sink with a true
    `per_input` attribute handles each record on its own (caption sidecars): under torchrun it runs on the
    rank that made the record; the others run on rank 0 with every record, in input order. `add` may
    return the record as the later sinks and the writer should see it (embed's file: a `row` added, the
    vector taken out); None leaves it as it was."""

    def add(self, record: dict[str, Any]) -> dict[str, Any] | None: ...

    def close(self) -> None: ...


@dataclass
class Job:
    task: "Task"
    items: list[InputItem]
    run: "RunOptions"
    sinks: list[RecordSink]
    names: dict[str, str]  # a temporary file written for an in-memory image -> the name its records carry
    cleanup: tempfile.TemporaryDirectory | None = None
    skipped_by_extension: int = 0  # files a folder scan passed over, for the summary line


@dataclass(frozen=True)
class Inputs:
    """This process's inputs, with in-memory images written to temporary PNG files."""

    items: list[InputItem]
    names: dict[str, str]
    cleanup: tempfile.TemporaryDirectory | None = None
    skipped_by_extension: int = 0

    @property
    def paths(self) -> list[str]:
        return [item.path for item in self.items]


def collect_inputs(options: InputOptions) -> Inputs:
    """The inputs this process works on: all of them, --shard's slice, and under torchrun this rank's
    part of that. Under torchrun only rank 0 discovers them (stdin can be read once, and a folder
    changing mid-scan must not give ranks different lists) and sends the list to the others."""
    from vitkit.runtime.distributed import get_context
    from vitkit.runtime.sharding import apply_shard

    paths, names, cleanup = _paths_of(options.inputs)
    context = get_context()
    if context is None:
        items = discover_all(paths, options.files_from, options.null)
    elif context.is_main:
        try:
            items = discover_all(paths, options.files_from, options.null)
        except BaseException:
            context.broadcast(None)  # the other ranks stop too instead of waiting for a list
            raise
        context.broadcast(items)
    else:
        items = context.broadcast(None)
        if items is None:
            raise UsageError("rank 0 could not gather the inputs", hint="its error is on stderr")
    skipped = getattr(items, "skipped_by_extension", 0)
    items = apply_shard(items, options.shard)
    return Inputs(context.shard(items) if context is not None else items, names, cleanup, skipped)


def _paths_of(inputs: Any) -> tuple[list[str], dict[str, str], tempfile.TemporaryDirectory | None]:
    """Paths as given; a PIL image is saved losslessly to a temporary PNG (decoded like any file) and
    its records are named after its `filename`, or `<image N>` for one made in memory."""
    if inputs is None:
        return [], {}, None
    if isinstance(inputs, (str, os.PathLike)) or _is_image(inputs):
        inputs = [inputs]
    paths, names, cleanup = [], {}, None
    for number, source in enumerate(inputs):
        if not _is_image(source):
            paths.append(os.fspath(source))
            continue
        cleanup = cleanup or tempfile.TemporaryDirectory(prefix="vitkit-images-")
        path = os.path.join(cleanup.name, f"image-{number}.png")
        image = source if source.mode in ("RGB", "RGBA", "L", "LA", "P", "I;16", "1") else source.convert("RGB")
        image.save(path, format="PNG")
        paths.append(path)
        names[path] = getattr(source, "filename", "") or f"<image {number}>"
    return paths, names, cleanup


def _is_image(value: Any) -> bool:
    return hasattr(value, "getpixel") and hasattr(value, "mode")  # PIL.Image without importing Pillow here


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


def make_job(task: "Task", inputs: Inputs, run: "RunOptions", sinks: Sequence[RecordSink] = (),
             html: str | None = None) -> Job:
    # Thumbnails of in-memory images come from their temporary files, which outlive the sinks' close.
    sources = {name: path for path, name in inputs.names.items()}
    from vitkit.outputs.html import ContactSheetSink

    sheet = [ContactSheetSink(html, task.layout, f"model {task.model.spec.id}", sources)] if html else []
    return Job(task, inputs.items, run, [*sinks, *sheet], inputs.names, inputs.cleanup, inputs.skipped_by_extension)


def iterate(job: Job | None, quiet: bool = False) -> Iterator["Record"]:
    """This process's records, lazily, in input order, with every sink fed and closed at the end.
    A job of None (nothing to do) yields nothing."""
    from vitkit.runtime.runner import run

    if job is None:
        return
    try:
        for record in run(job.task, job.items, job.run, Reporter(quiet=quiet)):
            record = _renamed(record, job.names)
            fed = _feed(job.sinks, record.to_dict())
            if record.ok:
                record = replace(record, fields={k: v for k, v in fed.items() if k not in ("path", "width", "height")})
            yield record
        _close(job.sinks)
    finally:
        if job.cleanup is not None:
            job.cleanup.cleanup()


def _renamed(record: "Record", names: dict[str, str]) -> "Record":
    return replace(record, path=names[record.path]) if record.path in names else record


def execute(job: Job | None, out: OutputOptions) -> int:
    """Stream records to the chosen writer and return the exit status: 1 if any input failed, after
    writing all the others. Under torchrun rank 0 writes every rank's records, the other ranks return
    0 (their failures are on their stderr and in rank 0's summary and status), and rank 0's summary
    line comes last, after every rank is done."""
    from vitkit.runtime.distributed import finish, get_context

    if job is None:
        return EXIT_OK
    context = get_context()
    local_sinks = [s for s in job.sinks if getattr(s, "per_input", False)]
    main_sinks = [s for s in job.sinks if s not in local_sinks]
    if out.resume:
        job = _resumed(job, out, context, main_sinks)
    if context is None:
        reporter = Reporter(quiet=out.quiet)
        failed = _write_all(_run_records(job, reporter, local_sinks), out, job.task.layout, main_sinks)
    else:
        reporter = Reporter(quiet=out.quiet, progress=None if context.is_main else False, prefix=context.prefix)
        failed = _run_on_rank(context, job, out, reporter, local_sinks, main_sinks)
    reporter.skipped_by_extension = job.skipped_by_extension
    exit_code = EXIT_SOME_INPUTS_FAILED if failed else EXIT_OK
    # Before closing per-input sinks: one that raises must not make torchrun stop rank 0 mid-write.
    finish(exit_code)
    _close(local_sinks)
    if context is None or context.is_main:
        reporter.print_summary()
    return exit_code


def _resumed(job: Job, out: OutputOptions, context: "RankContext | None", main_sinks: Sequence[RecordSink]) -> Job:
    """The job without the inputs that `out.output` already holds successful records of. Under
    torchrun rank 0 reads the file (the only rank that writes it) and tells the others. Whole-run
    files (an HTML sheet, COCO results) are rewritten at the end, so the kept records go into them first."""
    fmt = resolve_format(out.format, out.output)
    check_resumable(fmt, out.output)
    if main_sinks and fmt != "jsonl":
        raise UsageError("--resume with a whole-run file (--html, --coco) needs JSON lines output to rebuild it from",
                         hint="write -o results.jsonl")
    done = None
    if context is None or context.is_main:
        done = prepare_resume(out.output or "", fmt, job.task.layout)
        for record in (read_kept_records(out.output or "") if main_sinks else ()):
            for sink in main_sinks:
                sink.add(record)
    if context is not None:
        done = context.broadcast(done)
    items = [item for item in job.items if item.path not in done]
    if skipped := len(job.items) - len(items):
        Reporter(quiet=out.quiet, prefix=context.prefix if context else "").message(
            f"resume: {skipped} inputs already have results in {out.output}; skipped")
    return replace(job, items=items)


def _run_records(job: Job, reporter: Reporter, local_sinks: Sequence[RecordSink]) -> Iterator[dict[str, Any]]:
    from vitkit.runtime.runner import run

    try:
        for record in run(job.task, job.items, job.run, reporter):
            yield _feed(local_sinks, _renamed(record, job.names).to_dict())
    finally:
        if job.cleanup is not None:
            job.cleanup.cleanup()


def _write_all(records: Iterable[dict[str, Any]], out: OutputOptions, layout: "RecordLayout",
               sinks: Sequence[RecordSink]) -> int:
    """Write records and feed the sinks; returns how many were failures."""
    failed = 0
    fmt = resolve_format(out.format, out.output)
    with (open_appending_writer if out.resume else open_writer)(fmt, out.output, layout) as writer:
        for record in records:
            record = _feed(sinks, record)
            writer.write(record)
            failed += "error" in record
    _close(sinks)
    return failed


def _run_on_rank(context: "RankContext", job: Job, out: OutputOptions, reporter: Reporter,
                 local_sinks: Sequence[RecordSink], main_sinks: Sequence[RecordSink]) -> int:
    """Rank 0 streams its own records (the first slice) as they come, then the other ranks' in rank
    order once they are done; the other ranks only send theirs. Returns the job's failure count."""
    records = _run_records(job, reporter, local_sinks)
    if not context.is_main:
        context.gather((list(records), reporter.failures, len(job.items)))
        return 0

    def job_records() -> Iterator[dict[str, Any]]:
        yield from records
        gathered = context.gather(None) or []
        for other_records, failures, total in gathered[1:]:
            reporter.failures.update(failures)
            reporter.total += total
            yield from other_records

    return _write_all(job_records(), out, job.task.layout, main_sinks)


@dataclass(frozen=True)
class Listing:
    """Rows a command prints as a whole (index counts, search hits), and how many inputs failed."""

    rows: list[dict[str, Any]]
    failed: int = 0
    layout: "RecordLayout | None" = None  # how the rows look in a table or CSV; None: a table of their keys
    summary: str | None = None  # what a person reads instead of the table (eval detect, bench); rows stay for machines
    columns: tuple[str, ...] | None = None  # fixed columns, printed even with no rows (an empty list is an answer)

    @property
    def exit_code(self) -> int:
        return EXIT_SOME_INPUTS_FAILED if self.failed else EXIT_OK


def write_rows(listing: Listing, out: OutputOptions) -> int:
    """Print a listing in the chosen format (to --output where the command has one); its exit status."""
    fmt = resolve_format(out.format, out.output)
    if fmt == "table" and listing.summary is not None:
        with open_output(out.output) as stream:
            stream.write(listing.summary)
    elif listing.layout is not None:
        with open_writer(resolve_format(out.format, out.output), out.output, listing.layout) as writer:
            for row in listing.rows:
                writer.write(row)
    elif listing.columns is not None or listing.rows:
        write_listing(listing.rows, listing.columns or tuple(listing.rows[0]), resolve_format(out.format, None))
    return listing.exit_code


def write_paths(listing: Listing, output: str | None, separator: str) -> int:
    """Bare paths, each followed by `separator`, for piping into other commands; the exit status."""
    with open_output(output) as stream:
        stream.write("".join(row["path"] + separator for row in listing.rows))
    return listing.exit_code


def _feed(sinks: Sequence[RecordSink], record: dict[str, Any]) -> dict[str, Any]:
    for sink in sinks:
        record = sink.add(record) or record
    return record


def _close(sinks: Sequence[RecordSink]) -> None:
    for sink in sinks:
        sink.close()
