"""`--resume`: an output file that grows record by record, and a rerun that continues where it stopped.

Without --resume an output file is written atomically (whole or not at all), so an interrupted run
leaves nothing. With it, records are appended and flushed as they come; a rerun keeps the earlier
successful records, drops failed ones (they run again) and a torn last line left by a kill, and
skips the inputs already done. Records keep their schema: what was done is read back from `path`
(and `error`) alone.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from pathlib import Path
from dataclasses import dataclass
from typing import Iterator

from vitkit.errors import UsageError
from vitkit.outputs.files import atomic_write_path, output_errors
from vitkit.outputs.records import RecordLayout
from vitkit.outputs.writers import OutputStream, Writer, build_writer, neutralise_formula

RESUMABLE_FORMATS = ("jsonl", "csv")


def check_resumable(fmt: str, output: str | None) -> None:
    if not output or output == "-":
        raise UsageError("--resume needs an output file to continue", hint="add -o results.jsonl (or .csv)")
    if fmt not in RESUMABLE_FORMATS:
        raise UsageError(f"--resume appends records, which {fmt} output cannot take", hint="use --format jsonl or csv")


@dataclass(frozen=True)
class Completed:
    """The input paths an earlier run finished (picklable: torchrun's rank 0 sends it to the others)."""

    paths: frozenset[str] = frozenset()
    as_cells: bool = False  # CSV: the paths are spreadsheet-safe cells, so compare in that form

    def __contains__(self, path: str) -> bool:
        return (neutralise_formula(path) if self.as_cells else path) in self.paths


def prepare_resume(output: str, fmt: str, layout: RecordLayout) -> Completed:
    """Keep the earlier run's successful records in `output` (rewritten atomically without the failed
    ones and a torn last line) and return the paths they are of."""
    path = Path(output)
    if not path.exists():
        return Completed()
    with output_errors(output):
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    complete = text[: text.rfind("\n") + 1]  # a line without its newline was cut off by a kill
    kept, done = (_kept_jsonl if fmt == "jsonl" else _kept_csv)(complete, layout, output)
    with atomic_write_path(path) as temp, output_errors(output):
        temp.write_text(kept, encoding="utf-8", errors="surrogateescape", newline="")
    return Completed(frozenset(done), as_cells=fmt == "csv")


def read_kept_records(output: str) -> Iterator[dict]:
    """The records `prepare_resume` kept in a JSON-lines output (all whole, all successful), in order."""
    if not os.path.exists(output):
        return
    with output_errors(output), open(output, encoding="utf-8", errors="surrogateescape") as handle:
        for line in handle:
            yield json.loads(line)


def _kept_jsonl(text: str, layout: RecordLayout, output: str) -> tuple[str, set[str]]:
    kept, done = [], set()
    for line in text.splitlines(keepends=True):
        try:
            record = json.loads(line)
        except ValueError:
            continue  # torn by a kill mid-write
        if isinstance(record, dict) and "path" in record and "error" not in record:
            kept.append(line)
            done.add(record["path"])
    return "".join(kept), done


def _kept_csv(text: str, layout: RecordLayout, output: str) -> tuple[str, set[str]]:
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    if text and list(csv.reader(io.StringIO(text, newline="")))[0] != list(layout.csv_columns):
        raise UsageError(f"{output} is not this command's CSV output; --resume would mix two kinds of rows",
                         hint="write to a new file, or rerun without --resume")
    failed = {row["path"] for row in rows if row.get("error")}
    kept = [row for row in rows if row["path"] not in failed]
    stream = io.StringIO(newline="")
    writer = csv.DictWriter(stream, fieldnames=list(layout.csv_columns))
    writer.writeheader()
    writer.writerows(kept)
    return stream.getvalue(), {row["path"] for row in kept}


@contextlib.contextmanager
def open_appending_writer(fmt: str, output: str, layout: RecordLayout) -> Iterator[Writer]:
    """A writer that appends to `output` and flushes every record, so a kill loses at most one line."""
    with output_errors(output):
        empty = not os.path.exists(output) or os.path.getsize(output) == 0
        handle = open(output, "a", encoding="utf-8", errors="surrogateescape", newline="")
    try:
        stream = OutputStream(handle, output)
        writer = build_writer(fmt, stream, layout) if empty or fmt != "csv" else _HeaderlessCsv(stream, layout)
        yield writer
        writer.close()
    finally:
        with output_errors(output):
            handle.close()


class _HeaderlessCsv:
    """CSV rows under the header an earlier run wrote."""

    def __init__(self, stream: OutputStream, layout: RecordLayout) -> None:
        self.stream, self.layout = stream, layout
        self.writer = csv.DictWriter(stream, fieldnames=list(layout.csv_columns), extrasaction="ignore")

    def write(self, record: dict) -> None:
        for row in self.layout.csv_rows(record):
            self.writer.writerow({k: neutralise_formula(v) for k, v in row.items()})
        self.stream.flush()

    def close(self) -> None:
        self.stream.flush()
