"""`vitkit classify` end to end through the CLI, on real image files and a tiny local timm model."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import BROKEN_SAMPLES, GOOD_SAMPLES, SAMPLE_DATA, SAMPLE_ERRORS, parse_jsonl, run_vitkit
from vitkit.cli import app

runner = CliRunner()


def invoke(*args: str, input: str | None = None):
    return runner.invoke(app, list(args), input=input)


def test_jsonl_one_line_per_image_in_order_with_errors(tiny_timm_dir: Path, mixed_samples: Path) -> None:
    result = invoke("classify", str(mixed_samples), "--model", str(tiny_timm_dir), "--format", "jsonl", "-k", "3")
    records = parse_jsonl(result.stdout)
    expected = sorted([f"broken/{n}" for n in BROKEN_SAMPLES]) + GOOD_SAMPLES
    assert [os.path.relpath(r["path"], mixed_samples) for r in records] == sorted(expected)
    for record in records:
        if os.path.basename(os.path.dirname(record["path"])) == "broken":
            assert set(record) == {"path", "error"} and record["error"]
        else:
            assert set(record) == {"path", "width", "height", "predictions"}
            assert len(record["predictions"]) == 3
            for p in record["predictions"]:
                assert set(p) == {"label", "class_id", "score"}
                assert 0 <= p["score"] <= 1 and isinstance(p["class_id"], int) and p["label"]
            scores = [p["score"] for p in record["predictions"]]
            assert scores == sorted(scores, reverse=True)
    assert result.exit_code == 1
    assert "3 of 9 inputs failed" in result.stderr
    for name in BROKEN_SAMPLES:
        assert f"broken/{name}:" in result.stderr


def test_error_reasons_name_the_problem(tiny_timm_dir: Path) -> None:
    result = invoke("classify", str(SAMPLE_ERRORS), "--model", str(tiny_timm_dir))
    errors = {Path(r["path"]).name: r["error"] for r in parse_jsonl(result.stdout)}
    assert errors["empty.jpg"] == "empty file (0 bytes)"
    assert "truncated" in errors["truncated.jpg"]
    assert "not an image" in errors["not_an_image.jpg"]


def test_exit_zero_when_all_succeed_and_labels_come_from_imagenet(tiny_timm_dir: Path) -> None:
    result = invoke("classify", *(str(SAMPLE_DATA / n) for n in GOOD_SAMPLES), "--model", str(tiny_timm_dir))
    assert result.exit_code == 0, result.stderr
    records = parse_jsonl(result.stdout)
    assert [Path(r["path"]).name for r in records] == GOOD_SAMPLES  # order as given
    from timm.data import ImageNetInfo

    names = ImageNetInfo("imagenet-1k").label_descriptions()
    for p in records[0]["predictions"]:
        assert p["label"] == names[p["class_id"]]
    assert result.stderr == ""


def test_checkpoint_brings_its_own_labels(tiny_timm_labelled_dir: Path) -> None:
    result = invoke("classify", str(SAMPLE_DATA / "chelsea.jpg"), "--model", str(tiny_timm_labelled_dir), "-k", "5")
    assert result.exit_code == 0, result.stderr
    [record] = parse_jsonl(result.stdout)
    assert sorted(p["label"] for p in record["predictions"]) == ["cat", "dog", "rocket"]  # k capped at 3 classes


def test_labels_file_for_custom_checkpoint(tmp_path: Path) -> None:
    import timm
    from timm.models import save_for_hf

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=2, depth=1,
                              embed_dim=32, num_heads=2, img_size=32)
    save_for_hf(model, str(tmp_path / "m"), safe_serialization=True)
    (tmp_path / "m" / "labels.txt").write_text("good\nbad\n")
    result = invoke("classify", str(SAMPLE_DATA / "coffee.jpg"), "--model", f"local-dir:{tmp_path / 'm'}")
    assert {p["label"] for p in parse_jsonl(result.stdout)[0]["predictions"]} == {"good", "bad"}


@pytest.mark.parametrize("fmt", ["json", "csv", "table"])
def test_other_formats(tiny_timm_dir: Path, mixed_samples: Path, fmt: str) -> None:
    result = invoke("classify", str(mixed_samples), "--model", str(tiny_timm_dir), "--format", fmt, "-k", "2")
    assert result.exit_code == 1
    if fmt == "json":
        records = json.loads(result.stdout)
        assert len(records) == 9 and sum("error" in r for r in records) == 3
    elif fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(result.stdout)))
        assert len(rows) == 6 * 2 + 3  # long form: one row per prediction, one per failure
        assert {r["rank"] for r in rows if not r["error"]} == {"1", "2"}
    else:
        assert "chelsea.jpg" in result.stdout and "error: empty file" in result.stdout


def test_output_file_and_format_from_extension(tiny_timm_dir: Path, mixed_samples: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    result = invoke("classify", str(mixed_samples), "--model", str(tiny_timm_dir), "--output", str(out))
    assert result.stdout == ""
    assert len(json.loads(out.read_text())) == 9
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temp file left behind


def test_files_from_stdin_and_nul_separated(tiny_timm_dir: Path, tmp_path: Path) -> None:
    paths = [str(SAMPLE_DATA / "rocket.jpg"), str(SAMPLE_ERRORS / "empty.jpg"), str(SAMPLE_DATA / "coffee.jpg")]
    result = invoke("classify", "--files-from", "-", "--model", str(tiny_timm_dir), input="\n".join(paths) + "\n")
    assert [r["path"] for r in parse_jsonl(result.stdout)] == paths
    listing = tmp_path / "list.bin"
    listing.write_text("\0".join(reversed(paths)) + "\0")
    result = invoke("classify", "--files-from", str(listing), "-0", "--model", str(tiny_timm_dir))
    assert [r["path"] for r in parse_jsonl(result.stdout)] == list(reversed(paths))


def test_missing_path_is_an_error_record_not_a_crash(tiny_timm_dir: Path) -> None:
    result = invoke("classify", str(SAMPLE_DATA / "chelsea.jpg"), "nope/missing.jpg", "--model", str(tiny_timm_dir))
    records = parse_jsonl(result.stdout)
    assert records[1] == {"path": "nope/missing.jpg", "error": "no such file or directory"}
    assert "predictions" in records[0] and result.exit_code == 1


def test_usage_errors_exit_2(tiny_timm_dir: Path, tmp_path: Path) -> None:
    result = invoke("classify", str(tmp_path), "--model", str(tiny_timm_dir))
    assert result.exit_code == 2 and "no images found" in result.stderr
    result = invoke("classify", str(SAMPLE_DATA), "--model", str(tiny_timm_dir), "--format", "xml")
    assert result.exit_code == 2


def test_offline_default_model_exits_3_with_one_clear_line() -> None:
    result = invoke("classify", str(SAMPLE_DATA))
    assert result.exit_code == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "vit-b16" in lines[0] and "vitkit models pull vit-b16" in lines[0]
    assert result.stdout == ""


def test_misspelt_model_suggests_close_matches() -> None:
    result = invoke("classify", str(SAMPLE_DATA), "--model", "vit-b61")
    assert result.exit_code == 3
    assert "unknown model 'vit-b61'" in result.stderr and "vit-b16" in result.stderr


def test_model_for_another_task_is_refused() -> None:
    result = invoke("classify", str(SAMPLE_DATA), "--model", "clip-b32")
    assert result.exit_code == 2 and "cannot classify" in result.stderr


def test_every_command_has_help_with_an_example() -> None:
    for args in (["--help"], ["classify", "--help"], ["models", "--help"], ["models", "list", "--help"],
                 ["models", "show", "--help"], ["models", "pull", "--help"]):
        result = invoke(*args)
        assert result.exit_code == 0, args
        assert "Example" in result.stdout or args == ["models", "--help"], args


def test_real_subprocess_jsonl_and_exit_code(tiny_timm_dir: Path, mixed_samples: Path) -> None:
    proc = run_vitkit("classify", str(mixed_samples), "--model", str(tiny_timm_dir), "-k", "1", "--workers", "2")
    assert proc.returncode == 1
    records = parse_jsonl(proc.stdout)  # piped stdout: JSONL by default, nothing else on it
    assert len(records) == 9
    assert "Traceback" not in proc.stderr


def test_pipe_into_head_closes_cleanly(tiny_timm_dir: Path) -> None:
    command = (f"{sys.executable} -m vitkit classify {SAMPLE_DATA} {SAMPLE_DATA} {SAMPLE_DATA}/*.jpg "
               f"--model {tiny_timm_dir} -b 1 | head -1")
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True,
                          env=os.environ.copy(), timeout=300)
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["path"].endswith("astronaut.jpg")
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr


def test_html_contact_sheet_has_a_tile_per_input(tiny_timm_dir: Path, mixed_samples: Path, tmp_path: Path) -> None:
    sheet = tmp_path / "sheet.html"
    result = invoke("classify", str(mixed_samples), "--model", str(tiny_timm_dir), "-k", "1", "--html", str(sheet))
    assert result.exit_code == 1  # the broken samples
    page = sheet.read_text(encoding="utf-8")
    records = parse_jsonl(result.stdout)
    assert page.count('<figure class="tile"') == len(records) == len(GOOD_SAMPLES) + len(BROKEN_SAMPLES)
    assert all(r["predictions"][0]["label"].split(",")[0] in page for r in records if "error" not in r)


def _resume_inputs(tmp_path: Path, count: int) -> Path:
    """`count` small photos (copies of chelsea.jpg) and the broken samples, in one folder."""
    import shutil

    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(count):
        shutil.copy(SAMPLE_DATA / "chelsea.jpg", folder / f"p{i:03d}.jpg")
    for name in BROKEN_SAMPLES:
        shutil.copy(SAMPLE_ERRORS / name, folder / f"p{count // 2:03d}_{name}")
    return folder


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_resume_after_sigkill_processes_only_the_rest(tiny_timm_dir: Path, tmp_path: Path, suffix: str) -> None:
    import signal
    import time

    folder = _resume_inputs(tmp_path, 300)
    out = tmp_path / f"out{suffix}"
    args = [sys.executable, "-m", "vitkit", "classify", str(folder), "--model", str(tiny_timm_dir), "-k", "2",
            "-b", "1", "--workers", "0", "-o", str(out), "--resume"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
    deadline = time.monotonic() + 120
    while (not out.exists() or out.read_text().count("\n") < 20) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL  # killed mid-run, not finished
    with out.open("a") as handle:
        handle.write('{"path": "torn' if suffix == ".jsonl" else "torn,")  # as a kill mid-line leaves it
    before = out.read_text().count("\n")
    rerun = run_vitkit("classify", str(folder), "--model", str(tiny_timm_dir), "-k", "2", "-b", "1",
                       "--workers", "0", "-o", str(out), "--resume")
    assert rerun.returncode == 1, rerun.stderr  # the broken samples fail again
    skipped = int(rerun.stderr.split("resume: ")[1].split()[0])
    assert 0 < skipped < 300
    if suffix == ".jsonl":
        records = parse_jsonl(out.read_text())
    else:
        records = list(csv.DictReader(io.StringIO(out.read_text(), newline="")))
        header = out.read_text().splitlines()[0]
        assert header.startswith("path,") and out.read_text().count(header) == 1  # one header, the first run's
    paths = [r["path"] for r in records if suffix == ".jsonl" or r["rank"] in ("1", "")]
    expected = sorted(str(p) for p in folder.iterdir())
    assert sorted(paths) == expected  # every input exactly once
    assert sum(bool(r.get("error")) for r in records) == len(BROKEN_SAMPLES)
    assert skipped <= before  # the rerun skipped only what the killed run had finished


def test_resume_needs_a_jsonl_or_csv_file(tiny_timm_dir: Path, mixed_samples: Path, tmp_path: Path) -> None:
    no_file = invoke("classify", str(mixed_samples), "--model", str(tiny_timm_dir), "--resume")
    assert no_file.exit_code == 2 and "--resume needs an output file" in no_file.stderr
    as_json = invoke("classify", str(mixed_samples), "--model", str(tiny_timm_dir), "--resume", "-o",
                     str(tmp_path / "x.json"))
    assert as_json.exit_code == 2 and "jsonl or csv" in as_json.stderr
    done = tmp_path / "done.jsonl"
    first = invoke("classify", str(mixed_samples), "--model", str(tiny_timm_dir), "--resume", "-o", str(done))
    again = invoke("classify", str(mixed_samples), "--model", str(tiny_timm_dir), "--resume", "-o", str(done))
    assert first.exit_code == again.exit_code == 1
    assert f"resume: {len(GOOD_SAMPLES)} inputs already have results" in again.stderr
    records = parse_jsonl(done.read_text())
    assert len(records) == len(GOOD_SAMPLES) + len(BROKEN_SAMPLES)
    assert len({r["path"] for r in records}) == len(records)


def test_output_checks_come_before_the_model_loads(tmp_path: Path) -> None:
    """A bad -o or --resume is refused at once: the model named here does not exist, and is never reached."""
    missing = str(tmp_path / "no-such-model")
    bad_extension = invoke("classify", str(SAMPLE_DATA), "--model", missing, "-o", str(tmp_path / "x.txt"))
    assert bad_extension.exit_code == 2 and "unknown output extension '.txt'" in bad_extension.stderr
    no_file = invoke("classify", str(SAMPLE_DATA), "--model", missing, "--resume")
    assert no_file.exit_code == 2 and "--resume needs an output file" in no_file.stderr
    sheet = invoke("classify", str(SAMPLE_DATA), "--model", missing, "--resume", "-o", str(tmp_path / "x.csv"),
                   "--html", str(tmp_path / "x.html"))
    assert sheet.exit_code == 2 and "--resume with --html needs JSON lines" in sheet.stderr
    assert "no-such-model" not in bad_extension.stderr + no_file.stderr + sheet.stderr


def test_resume_rebuilds_the_contact_sheet_from_every_record(tiny_timm_dir: Path, tmp_path: Path) -> None:
    out, sheet = tmp_path / "out.jsonl", tmp_path / "sheet.html"
    common = ("--model", str(tiny_timm_dir), "-o", str(out), "--resume", "--html", str(sheet))
    assert invoke("classify", str(SAMPLE_DATA / GOOD_SAMPLES[0]), *common).exit_code == 0
    assert invoke("classify", str(SAMPLE_DATA), *common).exit_code == 0
    html = sheet.read_text()
    assert all(html.count(name) >= 1 for name in GOOD_SAMPLES)  # the first run's image is on the sheet too
