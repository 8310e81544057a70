"""Output formats: valid JSON/JSONL/CSV, no spreadsheet formulas, files that appear whole or not at all."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest

from vitkit.errors import UsageError
from vitkit.retrieval.search import SEARCH_LAYOUT
from vitkit.tasks.classify import CLASSIFY_LAYOUT
from vitkit.tasks.detect import DETECT_LAYOUT
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
    with pytest.raises(UsageError, match="unknown output extension '.unknown'") as refused:
        resolve_format("auto", "out.unknown")
    assert ".csv" in refused.value.hint and "--format" in refused.value.hint
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


def test_unknown_output_extension_is_refused_unless_the_format_is_named() -> None:
    """`-o x.txt` used to get a box-drawing table; now the format must be asked for by name."""
    with pytest.raises(UsageError, match=r"-o x.txt: unknown output extension '.txt'"):
        resolve_format("auto", "x.txt")
    assert resolve_format("table", "x.txt") == "table" and resolve_format("jsonl", "x.txt") == "jsonl"
    assert resolve_format("auto", "/dev/full") == "jsonl"  # no extension: a device or FIFO gets JSON lines
    assert resolve_format("auto", "OUT.JSONL") == "jsonl"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def render_on_terminal(records: list[dict], layout, columns: int, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setenv("COLUMNS", str(columns))  # how rich learns a terminal's width
    stream = Terminal()
    writer = build_writer("table", stream, layout)
    for record in records:
        writer.write(record)
    writer.close()
    return ANSI.sub("", stream.getvalue()).rstrip("\n").splitlines()


LONG_LABEL = "American black bear, black bear, Ursus americanus, Euarctos americanus"


def test_table_fits_80_columns_with_paths_whole_and_one_line_per_label(monkeypatch: pytest.MonkeyPatch) -> None:
    records = [
        {"path": "photos/hubble_deep_field.jpg", "width": 1000, "height": 872,
         "predictions": [{"label": LONG_LABEL, "class_id": 295, "score": 0.3214},
                         {"label": "tabby, tabby cat", "class_id": 281, "score": 0.1}]},
        {"path": "photos/empty.jpg", "error": "empty file (0 bytes)"},
        {"path": "photos/" + "deep/" * 20 + "cat.jpg", "width": 1, "height": 1,
         "predictions": [{"label": "tabby, tabby cat", "class_id": 281, "score": 0.9}]},
    ]
    lines = render_on_terminal(records, CLASSIFY_LAYOUT, 80, monkeypatch)
    assert max(len(line) for line in lines) <= 80
    assert lines[0].split() == ["path", "result"]
    assert re.search(r"^photos/hubble_deep_field\.jpg\s+0\.32  American black bear", lines[2])
    assert lines[2].endswith("…")  # a long label is cut, not wrapped into the next label's line
    assert re.search(r"\s0\.10  tabby, tabby cat$", lines[3].rstrip())
    assert re.search(r"^photos/empty\.jpg\s+error: empty file \(0 bytes\)$", lines[4].rstrip())
    folded = "".join(line.split("  ")[0].strip() for line in lines[5:])  # a long path folds, never cut
    assert folded == records[2]["path"]


def test_detections_beyond_the_shown_lines_are_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    found = [{"label": f"thing{i}", "class_id": i, "score": 1 - i / 100, "box": [0, 0, 1, 1]} for i in range(17)]
    lines = render_on_terminal([{"path": "a.jpg", "width": 2, "height": 2, "detections": found}],
                               DETECT_LAYOUT, 80, monkeypatch)
    assert [line.split()[-1] for line in lines[2:7]] == [f"thing{i}" for i in range(5)]
    assert lines[7].strip() == "… and 12 more"
    assert DETECT_LAYOUT.describe({"detections": found}).endswith(" … and 11 more")  # the HTML sheet's line


def test_search_table_has_rank_path_score_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    hits = [{"rank": 1, "path": "photos/cat.jpg", "score": 0.18634}, {"rank": 2, "path": "photos/dog.jpg", "score": 0.1}]
    lines = render_on_terminal(hits, SEARCH_LAYOUT, 80, monkeypatch)
    assert lines[0].split() == ["rank", "path", "score"]
    assert [line.split() for line in lines[2:]] == [["1", "photos/cat.jpg", "0.186"], ["2", "photos/dog.jpg", "0.100"]]


def test_classify_to_a_txt_file_is_a_usage_error_unless_the_format_is_named(tiny_timm_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tests.conftest import SAMPLE_DATA
    from vitkit.cli import app

    target = tmp_path / "x.txt"
    args = ["classify", str(SAMPLE_DATA / "chelsea.jpg"), "--model", str(tiny_timm_dir), "-o", str(target)]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2 and not target.exists()
    assert "unknown output extension '.txt'" in refused.stderr and ".csv, .json, .jsonl, .ndjson" in refused.stderr
    table = CliRunner().invoke(app, [*args, "--format", "table"])
    assert table.exit_code == 0, table.stderr
    assert re.search(r"chelsea\.jpg\s+\d\.\d\d  \S", target.read_text())


def test_layouts_without_ranked_items_keep_their_own_description(monkeypatch: pytest.MonkeyPatch) -> None:
    """Semantic segments carry a label and a null score: the table shows the task's area summary instead."""
    from vitkit.tasks.segment import SEGMENT_LAYOUT

    record = {"path": "a.png", "width": 10, "height": 10, "mask": None, "overlay": None,
              "segments": [{"id": 3, "label": "sky", "score": None, "area": 60, "box": [0, 0, 9, 5]}]}
    lines = render_on_terminal([record], SEGMENT_LAYOUT, 80, monkeypatch)
    assert re.search(r"^a\.png\s+sky 60\.0%$", lines[2].rstrip())
    empty = render_on_terminal([{"path": "b.jpg", "width": 1, "height": 1, "detections": []}], DETECT_LAYOUT, 80,
                               monkeypatch)
    assert re.search(r"^b\.jpg\s+\(nothing\)$", empty[2].rstrip())
