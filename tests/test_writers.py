"""Output formats: valid JSON/JSONL/CSV, no spreadsheet formulas, files that appear whole or not at all."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from vitkit.tasks.classify import CLASSIFY_LAYOUT
from vitkit.outputs.writers import build_writer, open_writer, resolve_format

RECORDS = [
    {"path": "=cmd|' /C calc'!A0.jpg", "width": 2, "height": 3,
     "predictions": [{"label": "+tabby", "class_id": 281, "score": 0.5}, {"label": "-x", "class_id": 1, "score": 0.25}]},
    {"path": "broken.jpg", "error": "empty file (0 bytes)"},
    {"path": "caf\u00e9 \U0001f431.jpg", "width": 1, "height": 1, "predictions": []},
]


def render(fmt: str) -> str:
    stream = io.StringIO()
    writer = build_writer(fmt, stream, CLASSIFY_LAYOUT)
    for record in RECORDS:
        writer.write(record)
    writer.close()
    return stream.getvalue()


def test_jsonl_and_json_roundtrip() -> None:
    assert [json.loads(line) for line in render("jsonl").splitlines()] == RECORDS
    assert json.loads(render("json")) == RECORDS
    assert "\U0001f431" in render("jsonl")  # readable UTF-8, not \\u escapes


def test_empty_json_array() -> None:
    stream = io.StringIO()
    writer = build_writer("json", stream, CLASSIFY_LAYOUT)
    writer.close()
    assert json.loads(stream.getvalue()) == []


def test_csv_long_form_without_formulas() -> None:
    rows = list(csv.DictReader(io.StringIO(render("csv"))))
    assert len(rows) == 4
    assert rows[0]["path"].startswith("'=") and rows[0]["label"] == "'+tabby" and rows[1]["label"] == "'-x"
    assert rows[2] == {"path": "broken.jpg", "width": "", "height": "", "rank": "", "label": "", "class_id": "",
                       "score": "", "error": "empty file (0 bytes)"}


def test_undecodable_file_names_stay_valid_json() -> None:
    stream = io.StringIO()
    build_writer("jsonl", stream, CLASSIFY_LAYOUT).write({"path": "bad\udcff.jpg", "error": "x"})
    stream.getvalue().encode("utf-8")
    assert json.loads(stream.getvalue())["path"] == "bad\udcff.jpg"


def test_auto_format() -> None:
    assert resolve_format("auto", "out.csv") == "csv"
    assert resolve_format("auto", "out.unknown") == "jsonl"
    assert resolve_format("auto", None, io.StringIO()) == "jsonl"  # not a terminal


def test_output_file_is_atomic(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    out.write_text("previous results\n")
    with pytest.raises(RuntimeError):
        with open_writer("jsonl", str(out), CLASSIFY_LAYOUT) as writer:
            writer.write(RECORDS[0])
            raise RuntimeError("the run died half way")
    assert out.read_text() == "previous results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl"]
