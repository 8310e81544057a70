"""Output formats, streamed record by record: table | json | jsonl | csv, to stdout or atomically to a file."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import sys
from pathlib import Path
from typing import IO, Any, Iterator, Protocol

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from vitkit.errors import UsageError
from vitkit.outputs.files import atomic_write_path, output_errors
from vitkit.outputs.records import RecordLayout

FORMATS = ("auto", "table", "json", "jsonl", "csv")
_EXTENSION_FORMATS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


class Writer(Protocol):
    def write(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def resolve_format(name: str, output: str | None, stdout: IO[str] | None = None) -> str:
    """`auto`: from the output file's extension, else a table on a terminal and JSONL in a pipe."""
    if name not in FORMATS:
        raise UsageError(f"unknown format {name!r}", hint=f"use one of {', '.join(FORMATS)}")
    if name != "auto":
        return name
    if output:
        return format_from_extension(output)
    stream = stdout or sys.stdout
    return "table" if stream.isatty() else "jsonl"


def format_from_extension(output: str) -> str:
    """`-o` picks the format from its extension; an unknown one (`.txt`, `.xlsx`) is refused rather than
    guessed, since a table or JSON lines under a name that promises something else misleads whoever opens
    it. A name without an extension (a device, a FIFO, `-`) gets JSON lines."""
    extension = os.path.splitext(output)[1].lower()
    if not extension:
        return "jsonl"
    if extension not in _EXTENSION_FORMATS:
        known = ", ".join(sorted(_EXTENSION_FORMATS))
        raise UsageError(f"-o {output}: unknown output extension {extension!r}",
                         hint=f"use {known}, or name the format with --format {'|'.join(FORMATS[1:])}")
    return _EXTENSION_FORMATS[extension]


def to_json(record: dict[str, Any]) -> str:
    try:
        line = json.dumps(record, ensure_ascii=False)
        line.encode("utf-8")
        return line
    except UnicodeEncodeError:
        # Undecodable file names (surrogate escapes) cannot be UTF-8; \u escapes keep the line valid JSON.
        return json.dumps(record, ensure_ascii=True)


class JsonlWriter:
    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, record: dict[str, Any]) -> None:
        self.stream.write(to_json(record) + "\n")
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()


class JsonWriter:
    """A JSON array, still streamed: each element is written as soon as its record arrives."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.count = 0

    def write(self, record: dict[str, Any]) -> None:
        self.stream.write(("[\n  " if self.count == 0 else ",\n  ") + to_json(record))
        self.stream.flush()
        self.count += 1

    def close(self) -> None:
        self.stream.write("[]\n" if self.count == 0 else "\n]\n")
        self.stream.flush()


def printable(text: str) -> str:
    """Text that encodes as UTF-8: an undecodable file name's bytes (surrogate escapes) become \\xNN."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def neutralise_formula(value: Any) -> Any:
    """Spreadsheets run cells that start with = + - @ as formulas; a leading quote keeps them text."""
    if isinstance(value, str):
        return "'" + printable(value) if value.startswith(_FORMULA_PREFIXES) else printable(value)
    if isinstance(value, (list, dict)):
        return printable(json.dumps(value, ensure_ascii=False))
    return value


class CsvWriter:
    def __init__(self, stream: IO[str], layout: RecordLayout) -> None:
        self.stream = stream
        self.layout = layout
        self.writer = csv.DictWriter(stream, fieldnames=list(layout.csv_columns), extrasaction="ignore")
        self.writer.writeheader()

    def write(self, record: dict[str, Any]) -> None:
        for row in self.layout.csv_rows(record):
            self.writer.writerow({k: neutralise_formula(v) for k, v in row.items()})
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()


def table_console(stream: IO[str]) -> Console:
    # Off a terminal there is no width to fit; a wide table keeps each row on one line in files.
    width = None if stream.isatty() else 240
    return Console(file=stream, highlight=False, width=width)


# Lines of labels shown per row; the rest are counted ("… and 12 more"), JSON has them all.
TABLE_ITEMS = 5


def result_cell(record: dict[str, Any], layout: RecordLayout) -> Text:
    """One line per label, score first so the scores line up; long labels end in "…" rather than
    wrapping into the next label's line."""
    if "error" in record:
        return Text("error: " + printable(record["error"]), style="red")
    if layout.table_items is None:
        return Text(printable(layout.describe(record)))
    items = record.get(layout.table_items) or []
    if not items:
        return Text(printable(layout.describe(record)))  # the task's own words for nothing found
    lines = [f"{item['score']:.2f}  {printable(str(item['label']))}" for item in items[:TABLE_ITEMS]]
    if len(items) > TABLE_ITEMS:
        lines.append(f"… and {len(items) - TABLE_ITEMS} more")
    return Text("\n".join(lines), no_wrap=True, overflow="ellipsis")


def table_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return printable("" if value is None else str(value))


class TableWriter:
    """A rich table for people; it needs every row before it can size its columns. Per image: the path
    (folded, never cut) and the result; records with their own `table_columns` (search hits) get those."""

    def __init__(self, stream: IO[str], layout: RecordLayout) -> None:
        self.console = table_console(stream)
        self.layout = layout
        self.table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        if layout.table_columns:
            for name in layout.table_columns:
                self.table.add_column(name, overflow="fold", justify="right" if name != "path" else "left")
        else:
            self.table.add_column("path", overflow="fold", min_width=12)
            self.table.add_column("result", min_width=24)

    def write(self, record: dict[str, Any]) -> None:
        if not self.layout.table_columns:
            self.table.add_row(Text(printable(record["path"])), result_cell(record, self.layout))
            return
        cells = [Text(table_value(record.get(column))) for column in self.layout.table_columns]
        if "error" in record:
            cells[-1] = Text("error: " + printable(record["error"]), style="red")
        self.table.add_row(*cells)

    def close(self) -> None:
        self.console.print(self.table)


def build_writer(fmt: str, stream: IO[str], layout: RecordLayout) -> Writer:
    if fmt == "jsonl":
        return JsonlWriter(stream)
    if fmt == "json":
        return JsonWriter(stream)
    if fmt == "csv":
        return CsvWriter(stream, layout)
    if fmt == "table":
        return TableWriter(stream, layout)
    raise UsageError(f"unknown format {fmt!r}", hint=f"use one of {', '.join(FORMATS[1:])}")


class OutputStream:
    """A text stream whose write failures (disk full, file too large, I/O error) raise an OutputError
    naming the output, so the run ends with one clear line instead of a traceback."""

    encoding = "utf-8"

    def __init__(self, stream: IO[str], name: str) -> None:
        self._stream, self.name = stream, name

    def write(self, text: str) -> int:
        with output_errors(self.name):
            return self._stream.write(text)

    def flush(self) -> None:
        with output_errors(self.name):
            self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()


@contextlib.contextmanager
def open_output(path: str | None) -> Iterator[IO[str]]:
    """stdout, or a file that appears complete or not at all (written beside it, then renamed): a failed
    run, a full disk or an interrupt leave an existing file as it was."""
    if path is None or path == "-":
        yield OutputStream(sys.stdout, "standard output")  # type: ignore[misc]
        return
    with atomic_write_path(Path(path)) as temp:
        with output_errors(path):
            stream = open(temp, "w", encoding="utf-8", newline="")
        try:
            yield OutputStream(stream, path)  # type: ignore[misc]
        except BaseException:
            with contextlib.suppress(OSError):
                stream.close()
            raise
        with output_errors(path):
            stream.close()  # flushes the last buffered text: it can still fail


@contextlib.contextmanager
def open_writer(fmt: str, output: str | None, layout: RecordLayout) -> Iterator[Writer]:
    with open_output(output) as stream:
        writer = build_writer(fmt, stream, layout)
        yield writer
        writer.close()


def write_listing(rows: list[dict[str, Any]], columns: tuple[str, ...], fmt: str, stream: IO[str] | None = None) -> None:
    """Non-image listings (models, index stats): the same formats, with the columns given."""
    stream = stream or sys.stdout
    if fmt == "table":
        table = Table()
        for column in columns:
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*(escape(printable("" if row.get(c) is None else str(row.get(c)))) for c in columns))
        table_console(stream).print(table)
        return
    if fmt == "csv":
        writer = csv.DictWriter(stream, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: neutralise_formula(v) for k, v in row.items()})
        return
    if fmt == "json":
        stream.write(json.dumps(rows, ensure_ascii=False, indent=2) + "\n")
        return
    for row in rows:
        stream.write(to_json(row) + "\n")
