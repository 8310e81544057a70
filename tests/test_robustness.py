"""Hostile inputs and hostile surroundings, through the real command line (tests/corpus.py writes the files).

Each case checks the contract: a broken input is one error line naming the file and the reason, in
its own slot, with exit code 1, while every other input gets exactly its result from a clean run; an
output that cannot be written is one line and exit code 2 with earlier outputs intact. README.md's
"Robustness" section lists which test proves which guarantee (some live in older test files).
"""

from __future__ import annotations

import csv
import ctypes
import io
import json
import os
import resource
import shutil
import signal
import stat
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests import corpus
from tests.conftest import SAMPLE_DATA, parse_jsonl, run_vitkit
from tests.test_segment import tiny_segformer_dir  # noqa: F401 - a fixture, used by name
from vitkit.models.backends.aspect import MARGIN
from vitkit.cli import app

GOOD = [SAMPLE_DATA / name for name in ("chelsea.jpg", "rocket.jpg", "coffee.jpg")]
SCORE_TOLERANCE = 1e-5  # batch composition may change float sums in the last bits
runner = CliRunner()


def classify(model: Path, *paths: str | Path, extra: tuple[str, ...] = ()) -> tuple[int, list[dict], str]:
    result = runner.invoke(app, ["classify", *map(str, paths), "--model", str(model), "-k", "3", "--workers", "0",
                                 "--format", "jsonl", *extra])
    return result.exit_code, parse_jsonl(result.stdout), result.stderr


def same_predictions(got: dict, want: dict) -> bool:
    if [p["class_id"] for p in got["predictions"]] != [p["class_id"] for p in want["predictions"]]:
        return False
    return all(abs(g["score"] - w["score"]) < SCORE_TOLERANCE for g, w in zip(got["predictions"], want["predictions"]))


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


@pytest.fixture(scope="module")
def clean(tiny_timm_dir: Path) -> dict[str, dict]:
    """The good photos' records from a run with nothing else in it."""
    code, records, _ = classify(tiny_timm_dir, *GOOD)
    assert code == 0
    return {record["path"]: record for record in records}


# --- broken files ----------------------------------------------------------------------------------


@pytest.mark.parametrize("broken", corpus.BROKEN_FILES, ids=lambda b: b.name)
def test_a_broken_file_is_one_error_line_in_its_own_slot(broken: corpus.BrokenFile, tiny_timm_dir: Path,
                                                         clean: dict, tmp_path: Path) -> None:
    bad = tmp_path / broken.name
    bad.write_bytes(broken.content())
    paths = [str(GOOD[0]), str(bad), str(GOOD[1])]
    code, records, stderr = classify(tiny_timm_dir, *paths, extra=("-b", "3"))
    assert code == 1
    assert [r["path"] for r in records] == paths
    assert records[1] == {"path": str(bad), "error": broken.reason}
    assert error_lines(stderr) == [f"error: {bad}: {broken.reason}"]
    assert same_predictions(records[0], clean[paths[0]]) and same_predictions(records[2], clean[paths[2]])


def test_the_corpus_files_raise_what_they_claim_in_pillow() -> None:
    """The broken files really exercise Pillow's different failure types (open or load), not one kind."""
    raised = {}
    for broken in corpus.BROKEN_FILES:
        try:
            with Image.open(io.BytesIO(broken.content())) as image:
                image.load()
        except Exception as exc:  # noqa: BLE001 - recording whatever Pillow raises is the point
            raised[broken.name] = type(exc).__name__
    assert raised == {b.name: b.pillow_error for b in corpus.BROKEN_FILES}


def test_all_broken_files_and_unusual_images_in_one_real_run(tiny_timm_dir: Path, clean: dict, tmp_path: Path) -> None:
    """A real subprocess with worker processes: eight broken files in a row (whole batches of them) between
    good photos, every record in its slot, every good photo exactly as in a clean run."""
    reasons = {str(p): reason for p, reason in corpus.write_broken_files(tmp_path / "bad").items()}
    paths = [str(GOOD[0]), *reasons, str(GOOD[1]), str(GOOD[2])]
    paths.insert(3, paths.pop())  # one good photo in the middle of the broken ones too
    result = run_vitkit("classify", *paths, "--model", str(tiny_timm_dir), "-k", "3", "-b", "4", "--workers", "2")
    assert result.returncode == 1
    records = parse_jsonl(result.stdout)
    assert [r["path"] for r in records] == paths
    for record in records:
        if record["path"] in reasons:
            assert record == {"path": record["path"], "error": reasons[record["path"]]}
        else:
            assert same_predictions(record, clean[record["path"]])
    assert error_lines(result.stderr) == [f"error: {path}: {reasons[path]}" for path in paths if path in reasons]
    assert f"{len(reasons)} of {len(paths)} inputs failed" in result.stderr
    assert "Traceback" not in result.stderr


# --- unusual but valid images ------------------------------------------------------------------------


@pytest.mark.parametrize("write", corpus.UNUSUAL_IMAGES, ids=lambda w: w.__name__)
def test_unusual_image_gives_the_result_of_its_plain_rgb_equivalent(write: Callable, tiny_timm_dir: Path,
                                                                     tmp_path: Path) -> None:
    path, reference = write(tmp_path)
    code, [got, want], stderr = classify(tiny_timm_dir, path, reference)
    assert code == 0, stderr
    assert (got["width"], got["height"]) == (want["width"], want["height"])
    assert same_predictions(got, want)


@pytest.mark.parametrize("size", [(1, 5000), (5000, 1)])
def test_thin_image_is_classified_from_its_centre_at_normal_cost(size: tuple[int, int], tiny_timm_dir: Path,
                                                                 tmp_path: Path) -> None:
    """Without the aspect guard timm's resize would build a 248 x 1,240,000 image first (gigabytes)."""
    path, centre = corpus.thin_image(tmp_path, size, MARGIN)
    code, [got, want], stderr = classify(tiny_timm_dir, path, centre)
    assert code == 0, stderr
    assert (got["width"], got["height"]) == size
    assert same_predictions(got, want)


@pytest.fixture(scope="module")
def thin_images(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    folder = tmp_path_factory.mktemp("thin")
    return [str(corpus.thin_image(folder, size, MARGIN)[0]) for size in [(1, 5000), (5000, 1), (1, 1)]]


@pytest.mark.parametrize("command,fixture,extra", [
    ("label", "tiny_open_clip_dir", ("--labels", "cat,dog")),
    ("detect", "tiny_detr_dir", ("--threshold", "0")),
    ("segment", "tiny_segformer_dir", ()),
    ("inpaint", "tiny_transformers_mae_dir", ("--out-dir", "{tmp}")),
])
def test_thin_and_one_pixel_images_work_in_every_task(command: str, fixture: str, extra: tuple[str, ...],
                                                      thin_images: list[str], request: pytest.FixtureRequest,
                                                      tmp_path: Path) -> None:
    model = request.getfixturevalue(fixture)
    args = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    result = runner.invoke(app, [command, *thin_images, "--model", str(model), "--workers", "0", "-f", "jsonl", *args])
    assert result.exit_code == 0, result.stderr
    records = parse_jsonl(result.stdout)
    assert [(r["path"], r["width"], r["height"]) for r in records] == [
        (thin_images[0], 1, 5000), (thin_images[1], 5000, 1), (thin_images[2], 1, 1)]


def test_every_exif_orientation_gives_the_result_of_the_displayed_image(tiny_timm_dir: Path, tmp_path: Path) -> None:
    displayed = corpus.pattern(40, 24, seed=11)
    displayed.save(tmp_path / "displayed.png")
    oriented = [corpus.oriented_png(tmp_path, o, displayed) for o in range(1, 9)]
    code, records, stderr = classify(tiny_timm_dir, tmp_path / "displayed.png", *oriented)
    assert code == 0, stderr
    want = records[0]
    for record in records[1:]:
        assert (record["width"], record["height"]) == (40, 24)
        assert same_predictions(record, want), record["path"]
    assert len({tuple(p["class_id"] for p in r["predictions"]) for r in records}) == 1


@pytest.mark.parametrize("name", sorted(corpus.MALFORMED_EXIF))
def test_malformed_exif_is_a_warning_and_the_stored_pixels_are_used(name: str, tiny_timm_dir: Path,
                                                                    tmp_path: Path) -> None:
    path, reference = corpus.malformed_exif(tmp_path, name)
    code, [got, want], stderr = classify(tiny_timm_dir, path, reference)
    assert code == 0
    assert same_predictions(got, want)
    warnings = [line for line in stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: {path}: malformed EXIF data ignored")


# --- formats, codecs and C libraries -----------------------------------------------------------------


def test_shards_concatenate_to_the_whole_run_on_a_mixed_format_folder(tiny_timm_dir: Path, tmp_path: Path) -> None:
    """Unsharded, the TGA is decoded before the ICO; in shard 1/2 it is not. Each file's outcome is its own."""
    files = corpus.mixed_formats(tmp_path / "mixed")
    common = ("classify", str(tmp_path / "mixed"), "--model", str(tiny_timm_dir), "-k", "3", "--workers", "0")
    whole = run_vitkit(*common)
    shards = [run_vitkit(*common, "--shard", f"{index}/2") for index in range(2)]
    assert whole.returncode == 0, whole.stderr
    assert all(shard.returncode == 0 for shard in shards), [shard.stderr for shard in shards]
    records, sharded = parse_jsonl(whole.stdout), parse_jsonl(shards[0].stdout) + parse_jsonl(shards[1].stdout)
    assert [r["path"] for r in records] == [r["path"] for r in sharded] == [str(f) for f in files]
    assert all("error" not in r for r in records + sharded)
    for got, want in zip(sharded, records):
        assert (got["width"], got["height"]) == (want["width"], want["height"]) and same_predictions(got, want)


def test_unsupported_codecs_and_c_library_noise_are_one_line_per_file(tiny_timm_dir: Path, tmp_path: Path) -> None:
    """Real workers: libtiff's lines never reach stderr (none at all with --quiet), and files this
    installation cannot decode say what they need instead of "corrupt"."""
    folder = tmp_path / "odd"
    folder.mkdir()
    zeroed = corpus.tiff_that_libtiff_rejects(folder)
    unknown = corpus.tiff_with_compression(folder, 12345, "unknown-compression.tif")
    for name, data in corpus.STUB_FILES.items():
        (folder / name).write_bytes(data)
    shutil.copy(GOOD[0], folder / "photo.jpg")
    (folder / "notes.txt").write_text("not a picture")
    args = ("classify", str(folder), "--model", str(tiny_timm_dir), "-k", "1", "-b", "2", "--workers", "2")
    quiet, loud = run_vitkit(*args, "--quiet"), run_vitkit(*args)
    assert quiet.returncode == loud.returncode == 1
    assert quiet.stderr == ""
    reasons = {r["path"]: r.get("error") for r in parse_jsonl(loud.stdout)}
    assert reasons[str(unknown)] == "unsupported: needs a TIFF decoder for compression 12345 (Pillow has none)"
    assert reasons[str(zeroed)].startswith("corrupt image data (OSError: decoder error -2, ZIPDecode: ")
    assert reasons[str(folder / "drawing.wmf")].startswith("unsupported: needs a WMF handler")
    assert reasons[str(folder / "photo.jpg")] is None
    assert str(folder / "data.h5") not in reasons  # HDF5 holds no picture: not picked by a folder scan
    lines = loud.stderr.splitlines()
    assert lines[:-1] == [f"error: {path}: {reason}" for path, reason in reasons.items() if reason]
    assert lines[-1] == ("3 of 4 inputs failed (2 unsupported, 1 corrupt); the others were processed; "
                         "4 files skipped by extension (name one to try it)")


def test_summary_counts_files_skipped_by_extension_when_all_succeed(tiny_timm_dir: Path, tmp_path: Path) -> None:
    shutil.copy(GOOD[0], tmp_path / "a.jpg")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "weights.h5").write_bytes(corpus.STUB_FILES["data.h5"])
    code, records, stderr = classify(tiny_timm_dir, tmp_path)
    assert code == 0 and [r["path"] for r in records] == [str(tmp_path / "a.jpg")]
    assert stderr.strip() == "1 input processed; 2 files skipped by extension (name one to try it)"


# --- folders and names -------------------------------------------------------------------------------


def test_hidden_files_resource_forks_and_symlink_loops(tiny_timm_dir: Path, tmp_path: Path) -> None:
    shutil.copy(GOOD[0], tmp_path / "a.jpg")
    corpus.write_apple_double(tmp_path / "._a.jpg")
    (tmp_path / ".cache").mkdir()
    shutil.copy(GOOD[1], tmp_path / ".cache" / "b.jpg")
    (tmp_path / "sub").mkdir()
    shutil.copy(GOOD[2], tmp_path / "sub" / "c.jpg")
    os.symlink(tmp_path, tmp_path / "sub" / "loop")
    code, records, stderr = classify(tiny_timm_dir, tmp_path)
    assert code == 0, stderr
    assert [r["path"] for r in records] == [str(tmp_path / "a.jpg"), str(tmp_path / "sub" / "c.jpg")]


_PR_CAPBSET_DROP = 24
_DAC_CAPABILITIES = (1, 2)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH: what lets root read any file


def _drop_root_file_powers() -> None:
    """In the child before exec: without these, even root gets 'permission denied' on a chmod 0 file."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in _DAC_CAPABILITIES:
        if libc.prctl(_PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def run_vitkit_with(preexec: Callable[[], None], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """run_vitkit, with a function run in the child before exec (limits, capabilities)."""
    return subprocess.run([sys.executable, "-m", "vitkit", *args], capture_output=True, text=True, cwd=cwd,
                          env=os.environ.copy(), timeout=300, preexec_fn=preexec)


def _without_root_powers(*args: str) -> subprocess.CompletedProcess:
    if os.geteuid() != 0:
        return run_vitkit(*args)
    try:
        return run_vitkit_with(_drop_root_file_powers, *args)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot drop root's file capabilities here: {exc}")


def test_unreadable_file_and_folder_are_reported_not_skipped(tiny_timm_dir: Path, tmp_path: Path) -> None:
    shutil.copy(GOOD[0], tmp_path / "locked.jpg")
    (tmp_path / "locked-folder").mkdir()
    shutil.copy(GOOD[1], tmp_path / "locked-folder" / "inside.jpg")
    shutil.copy(GOOD[2], tmp_path / "ok.jpg")
    (tmp_path / "locked.jpg").chmod(0)
    (tmp_path / "locked-folder").chmod(0)
    try:
        result = _without_root_powers("classify", str(tmp_path), "--model", str(tiny_timm_dir), "--workers", "0")
    finally:
        (tmp_path / "locked-folder").chmod(0o755)
    assert result.returncode == 1, result.stderr
    records = parse_jsonl(result.stdout)
    expected = [(str(tmp_path / "locked-folder"), "cannot read folder: Permission denied"),
                (str(tmp_path / "locked.jpg"), "cannot read: permission denied")]
    assert [(r["path"], r.get("error")) for r in records] == [*expected, (str(tmp_path / "ok.jpg"), None)]
    assert error_lines(result.stderr) == [f"error: {path}: {reason}" for path, reason in expected]
    assert "2 of 3 inputs failed (2 unreadable)" in result.stderr


def test_hostile_file_names_stay_exact_in_json_csv_and_html(tiny_open_clip_dir: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    names = corpus.write_hostile_names(tmp_path / "names", GOOD[0])
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"\0".join(os.fsencode(name) for name in names))
    monkeypatch.chdir(tmp_path / "names")  # relative paths, so cells really start with = + - @
    common = ["label", "--files-from", str(listing), "-0", "--labels", "cat,dog", "--model", str(tiny_open_clip_dir),
              "--workers", "0", "-k", "1"]
    as_json = runner.invoke(app, [*common, "-f", "json", "--html", str(tmp_path / "sheet.html")])
    as_csv = runner.invoke(app, [*common, "-f", "csv"])
    assert as_json.exit_code == 0 == as_csv.exit_code, as_json.stderr + as_csv.stderr
    assert [r["path"] for r in json.loads(as_json.stdout)] == names
    cells = [row["path"] for row in csv.DictReader(io.StringIO(as_csv.stdout))]
    assert len(cells) == len(names) and "latin1-\\xe9t\\xe9.jpg" in cells  # undecodable bytes shown as \xNN
    assert [c for c in cells if "latin1" not in c] == [("'" + n if n[0] in "=+-@" else n) for n in names if "latin1" not in n]
    page = (tmp_path / "sheet.html").read_text(encoding="utf-8")
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;!--.jpg" in page


def test_outputs_land_inside_out_dir_uniquely_and_inputs_are_untouched(tiny_detr_dir: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    for relative in ("a/x.jpg", "b/x.jpg", "x.jpg"):
        (work / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(GOOD[0], work / relative)
    (tmp_path / "up").mkdir()
    shutil.copy(GOOD[1], tmp_path / "up" / "x.jpg")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*.jpg")}
    monkeypatch.chdir(work)
    inputs = ["a/x.jpg", "b/x.jpg", "x.jpg", str(work / "x.jpg"), "../up/x.jpg", "a/../b/x.jpg"]
    out = tmp_path / "out"
    result = runner.invoke(app, ["detect", *inputs, "--model", str(tiny_detr_dir), "--out-dir", str(out),
                                 "--workers", "0", "-f", "jsonl"])
    assert result.exit_code == 0, result.stderr
    outputs = [Path(r["output"]) for r in parse_jsonl(result.stdout)]
    assert len(set(outputs)) == len(set(os.path.normpath(i) for i in inputs))  # b/x.jpg twice: one file
    assert all(p.resolve().is_relative_to(out.resolve()) and p.is_file() for p in outputs)
    assert before == {p: p.read_bytes() for p in tmp_path.rglob("*.jpg") if not p.is_relative_to(out)}


# --- outputs that cannot be written ------------------------------------------------------------------


def _file_size_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:
        # Writes past `limit` bytes then fail with EFBIG, as on a full disk; the signal would kill instead.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def only_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def test_full_disk_keeps_the_previous_output_file(tiny_timm_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "results.jsonl"
    target.write_text("previous results\n")
    result = run_vitkit_with(_file_size_limit(64), "classify", *map(str, GOOD), "--model", str(tiny_timm_dir),
                             "--workers", "0", "-o", str(target))
    assert result.returncode == 2
    assert only_line(result.stderr).startswith(f"vitkit: error: cannot write {target}: File too large; free some space")
    assert target.read_text() == "previous results\n"
    assert os.listdir(tmp_path) == ["results.jsonl"]  # no temporary file left behind


def test_full_disk_keeps_the_index_as_it_was(tiny_open_clip_dir: Path, tmp_path: Path) -> None:
    photos, index = tmp_path / "photos", tmp_path / "index"
    photos.mkdir()
    shutil.copy(GOOD[0], photos / "first.jpg")
    built = runner.invoke(app, ["index", str(photos), "--model", str(tiny_open_clip_dir), "--index", str(index),
                                "--workers", "0"])
    assert built.exit_code == 0, built.stderr
    shutil.copy(GOOD[1], photos / "second.jpg")
    vectors = next(index.glob("vectors*.f16"))
    result = run_vitkit_with(_file_size_limit(vectors.stat().st_size), "index", str(photos), "--model",
                             str(tiny_open_clip_dir), "--index", str(index), "--workers", "0")
    assert result.returncode == 2
    # SQLite's shared-memory file is 32 KiB, so the limit usually stops SQLite ("disk I/O error") before
    # the vector file; either way it is one line naming the index. The vector append itself is reached by
    # test_a_full_disk_during_a_vector_write_leaves_the_index_as_it_was, the commit by test_index.py.
    assert only_line(result.stderr).startswith((f"vitkit: error: cannot use index {index}: ",
                                                f"vitkit: error: cannot write to index {index}: "))
    search = runner.invoke(app, ["search", "--text", "a cat", "--model", str(tiny_open_clip_dir), "--index",
                                 str(index), "-f", "jsonl"])
    assert search.exit_code == 0, search.stderr
    assert [hit["path"] for hit in parse_jsonl(search.stdout)] == [str(photos / "first.jpg")]
    again = runner.invoke(app, ["index", str(photos), "--model", str(tiny_open_clip_dir), "--index", str(index),
                                "--workers", "0", "-f", "json"])
    assert again.exit_code == 0 and json.loads(again.stdout)[0]["added"] == 1  # and it recovers once there is room


def test_full_disk_while_writing_task_files_keeps_earlier_ones(tiny_detr_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = runner.invoke(app, ["detect", str(GOOD[0]), "--model", str(tiny_detr_dir), "--out-dir", str(out),
                                "--workers", "0", "-f", "jsonl"])
    assert first.exit_code == 0, first.stderr
    [earlier] = parse_jsonl(first.stdout)
    content = Path(earlier["output"]).read_bytes()
    result = run_vitkit_with(_file_size_limit(1024), "detect", str(GOOD[0]), "--model", str(tiny_detr_dir),
                             "--out-dir", str(out), "--workers", "0")
    assert result.returncode == 2
    assert only_line(result.stderr).startswith(f"vitkit: error: cannot write {earlier['output']}: File too large")
    assert Path(earlier["output"]).read_bytes() == content
    assert sorted(p.name for p in Path(earlier["output"]).parent.iterdir()) == [Path(earlier["output"]).name]


@pytest.mark.parametrize("where", ["file-parent", "dev-full"])
def test_unwritable_output_is_one_line_and_exit_2(where: str, tiny_timm_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "plain-file").write_text("not a folder")
    target = {"file-parent": str(tmp_path / "plain-file" / "results.jsonl"), "dev-full": "/dev/full"}[where]
    reason = {"file-parent": "Not a directory", "dev-full": "No space left on device"}[where]
    result = runner.invoke(app, ["classify", str(GOOD[0]), "--model", str(tiny_timm_dir), "--workers", "0", "-o", target])
    assert result.exit_code == 2
    assert only_line(result.stderr).startswith(f"vitkit: error: cannot write {target}: {reason}; ")
    if where == "dev-full":  # written in place: renaming a temp file over it would replace the device
        assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_unwritable_out_dir_for_task_files(tiny_detr_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "plain-file").write_text("not a folder")
    out = tmp_path / "plain-file" / "out"
    result = runner.invoke(app, ["detect", str(GOOD[0]), "--model", str(tiny_detr_dir), "--out-dir", str(out),
                                 "--workers", "0"])
    assert result.exit_code == 2
    assert "cannot write " + str(out) in only_line(result.stderr) and "Not a directory" in result.stderr


def test_search_folders_with_sql_wildcards_are_literal(tiny_open_clip_dir: Path, tmp_path: Path) -> None:
    """`%` and `_` in a folder restriction match only themselves (a LIKE pattern would take '100x' for '100%')."""
    photos, index = tmp_path / "photos", tmp_path / "index"
    for folder, source in zip(("100%", "100x", "a_b", "axb"), GOOD * 2):
        (photos / folder).mkdir(parents=True)
        shutil.copy(source, photos / folder / "p.jpg")
    built = runner.invoke(app, ["index", str(photos), "--model", str(tiny_open_clip_dir), "--index", str(index),
                                "--workers", "0"])
    assert built.exit_code == 0, built.stderr
    for folder in ("100%", "a_b"):
        result = runner.invoke(app, ["search", "--text", "'; DROP TABLE files; --", str(photos / folder), "-k", "10",
                                     "--model", str(tiny_open_clip_dir), "--index", str(index), "-f", "jsonl"])
        assert result.exit_code == 0, result.stderr
        assert [hit["path"] for hit in parse_jsonl(result.stdout)] == [str(photos / folder / "p.jpg")]


# --- models --------------------------------------------------------------------------------------------


def test_pickled_checkpoint_is_refused_through_the_cli(tiny_timm_dir: Path, tmp_path: Path) -> None:
    import torch

    marker = tmp_path / "payload-ran"
    folder = tmp_path / "evil"
    folder.mkdir()
    shutil.copy(tiny_timm_dir / "config.json", folder / "config.json")

    class Payload:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    torch.save({"weights": Payload()}, folder / "pytorch_model.bin")
    result = runner.invoke(app, ["classify", str(GOOD[0]), "--model", str(folder)])
    assert result.exit_code == 3
    assert "pickled code" in only_line(result.stderr)
    assert not marker.exists() and result.stdout == ""


def test_unknown_pretrained_tag_is_an_error_not_random_weights(tmp_path: Path) -> None:
    result = runner.invoke(app, ["label", str(GOOD[0]), "--labels", "cat,dog", "--model", "ViT-B-32:not-a-tag"])
    assert result.exit_code == 3
    assert "no pretrained weights tagged 'not-a-tag'" in only_line(result.stderr) and result.stdout == ""


# --- any exception from Pillow is one file's failure -------------------------------------------------


class _Exploding:
    """Stands in for an opened image whose decoder raises `error` (no real file triggers some of these)."""

    def __init__(self, error: BaseException) -> None:
        self.error, self.size, self.mode, self.format, self.info = error, (8, 8), "RGB", "PNG", {}

    def getexif(self) -> dict:
        return {}

    def load(self) -> None:
        raise self.error

    def __enter__(self) -> "_Exploding":
        return self

    def __exit__(self, *exc: object) -> None:
        return None


@pytest.mark.parametrize("error,reason", [
    (MemoryError(), "out of memory while decoding"),
    (RuntimeError("decoder state broken"), "corrupt image data (RuntimeError: decoder state broken)"),
    (struct.error("unpack requires a buffer of 4 bytes"), "corrupt image data (error: unpack requires a buffer of 4 bytes)"),
    (ZeroDivisionError("division by zero"), "corrupt image data (ZeroDivisionError: division by zero)"),
    (RecursionError("maximum recursion depth exceeded"), "corrupt image data (RecursionError: maximum recursion depth exceeded)"),
    (Image.DecompressionBombError("Image size exceeds limit"),
     "Image size exceeds limit; raise the limit with --max-pixels"),
])
def test_any_exception_from_pillow_is_that_files_error(error: BaseException, reason: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from vitkit.inputs.data import ImageDataset
    from vitkit.inputs.discover import InputItem
    from vitkit.inputs.decode import DecodeOptions

    path = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(path)
    monkeypatch.setattr("vitkit.inputs.decode.Image.open", lambda *_, **__: _Exploding(error))
    sample = ImageDataset([InputItem(str(path))], lambda image, meta: image, DecodeOptions())[0]
    assert (sample.path, sample.error, sample.inputs) == (str(path), reason, None)


def test_a_preprocess_failure_is_that_files_error(tmp_path: Path) -> None:
    from vitkit.inputs.data import ImageDataset
    from vitkit.inputs.discover import InputItem
    from vitkit.inputs.decode import DecodeOptions

    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")

    def preprocess(image: Image.Image, meta: Any) -> Any:
        raise ValueError("cannot resize to 0 pixels")

    sample = ImageDataset([InputItem(str(tmp_path / "x.png"))], preprocess, DecodeOptions())[0]
    assert sample.error == "cannot preprocess: ValueError: cannot resize to 0 pixels"


_FULL_DISK_WRITER = """
import os, resource, signal, sys
import numpy as np
from vitkit.retrieval.index import Entry, FileState, VectorIndex
folder, dim = sys.argv[1], int(sys.argv[2])
try:
    with VectorIndex.open_for_writing(folder, "test-model", dim) as index:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        limit = os.path.getsize(os.path.join(folder, "vectors.f16")) + 100
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        index.add([Entry(FileState(f"/photos/new{i}.jpg", 1, 1), f"hash-new{i}", np.full(dim, i + 1.0), 1, 1)
                   for i in range(3)])
except BaseException as exc:  # what gets past __exit__ and close
    print(type(exc).__module__, type(exc).__name__, exc, sep=": ")
    sys.exit(1)
"""


def test_a_full_disk_during_a_vector_write_leaves_the_index_as_it_was(tmp_path: Path) -> None:
    """A file-size limit set after a successful open reaches the vector append itself (set before, SQLite's
    32 KiB -shm file hits it first). 3 rows of dim 512 fit in a write buffer, so a buffered write would
    fail only at flush, then again in the cleanup and in close, ending in a raw OSError."""
    from vitkit.retrieval.index import Entry, FileState, VectorIndex

    dim, folder = 512, tmp_path / "index"
    vector = np.ones(dim, dtype=np.float32)
    with VectorIndex.open_for_writing(folder, "test-model", dim) as index:
        index.add([Entry(FileState("/photos/a.jpg", 1, 1), "hash-a", vector, 1, 1)])
    child = subprocess.run([sys.executable, "-c", _FULL_DISK_WRITER, str(folder), str(dim)], capture_output=True,
                           text=True, env=os.environ.copy(), timeout=120)
    assert child.returncode == 1, child.stderr
    assert child.stdout.splitlines() == [f"vitkit.errors: IndexError_: cannot write to index {folder}: File too large"]
    with VectorIndex.open_for_reading(folder, "test-model") as index:
        assert index.known_paths() == {"/photos/a.jpg"}
        [[hit]] = index.search(vector, k=5)
        assert hit.path == "/photos/a.jpg" and hit.score == pytest.approx(1.0, abs=1e-3)
    with VectorIndex.open_for_writing(folder, "test-model", dim) as index:  # and it recovers once there is room
        index.add([Entry(FileState("/photos/b.jpg", 1, 1), "hash-b", -vector, 1, 1)])
        assert index.known_paths() == {"/photos/a.jpg", "/photos/b.jpg"}
