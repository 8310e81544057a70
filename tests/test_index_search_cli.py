"""`vitkit index` and `vitkit search` end to end: incremental updates, reuse, removal, ranking, piping."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import GOOD_SAMPLES, SAMPLE_DATA, parse_jsonl
from vitkit.cli import app

runner = CliRunner()


@pytest.fixture
def count_image_embeddings(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts images through the model's image tower (in this process: --workers only decode)."""
    import open_clip

    calls: list[int] = []
    original = open_clip.CLIP.encode_image

    def counting(self, image, normalize=False):
        calls.append(image.shape[0])
        return original(self, image, normalize=normalize)

    monkeypatch.setattr(open_clip.CLIP, "encode_image", counting)
    return calls


def index_cmd(folder: Path, model: Path, index_dir: Path, *extra: str) -> dict:
    result = runner.invoke(app, ["index", str(folder), "--model", str(model), "--index", str(index_dir),
                                 "--format", "json", *extra])
    assert result.exit_code in (0, 1), result.stderr
    [row] = json.loads(result.stdout)
    return row


def search_cmd(model: Path, index_dir: Path, *args: str) -> list[dict]:
    result = runner.invoke(app, ["search", "--model", str(model), "--index", str(index_dir), "--format", "jsonl", *args])
    assert result.exit_code in (0, 1), result.stderr
    return parse_jsonl(result.stdout)


def test_incremental_index_counts_model_calls(photos: Path, tiny_open_clip_dir: Path, tmp_path: Path,
                                              count_image_embeddings: list[int]) -> None:
    index_dir = tmp_path / "idx"
    first = index_cmd(photos, tiny_open_clip_dir, index_dir)
    assert (first["added"], first["failed"], first["removed"]) == (6, 3, 0)
    assert sum(count_image_embeddings) == 6
    count_image_embeddings.clear()
    second = index_cmd(photos, tiny_open_clip_dir, index_dir)
    assert sum(count_image_embeddings) == 0
    assert (second["added"], second["updated"], second["unchanged"]) == (0, 0, 6)

    (photos / "chelsea.jpg").rename(photos / "cat-renamed.jpg")
    third = index_cmd(photos, tiny_open_clip_dir, index_dir)
    assert sum(count_image_embeddings) == 0 and third["reused"] == 1 and third["removed"] == 1

    (photos / "rocket.jpg").unlink()
    shutil.copy(SAMPLE_DATA / "coffee.jpg", photos / "astronaut.jpg")  # new content under an old name
    fourth = index_cmd(photos, tiny_open_clip_dir, index_dir)
    assert fourth["removed"] == 1 and fourth["reused"] == 1 and sum(count_image_embeddings) == 0

    from PIL import Image

    Image.open(SAMPLE_DATA / "camera.jpg").rotate(90).save(photos / "camera.jpg")  # content never seen before
    fifth = index_cmd(photos, tiny_open_clip_dir, index_dir)
    assert fifth["updated"] == 1 and sum(count_image_embeddings) == 1

    paths = [r["path"] for r in search_cmd(tiny_open_clip_dir, index_dir, "--text", "a cat", "-k", "50")]
    names = sorted(Path(p).name for p in paths)
    assert names == sorted(["astronaut.jpg", "camera.jpg", "cat-renamed.jpg", "coffee.jpg", "hubble_deep_field.jpg"])


def brute_force(model_dir: Path, query: str, paths: list[Path]) -> list[tuple[str, float]]:
    import open_clip

    from vitkit.inputs.decode import DecodeOptions, decode_image

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{model_dir}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{model_dir}")
    model.eval()
    with torch.no_grad():
        text = model.encode_text(tokenizer([query]), normalize=True)[0]
        images = torch.stack([preprocess(decode_image(str(p), DecodeOptions()).image) for p in paths])
        feats = model.encode_image(images, normalize=True)
    # The index stores float16 vectors: rank on the same rounding.
    feats = torch.nn.functional.normalize(feats.half().float(), dim=-1)
    scores = (feats @ text).tolist()
    return sorted(zip(map(str, paths), scores), key=lambda item: (-item[1], item[0]))


def test_search_ranking_equals_brute_force(photos: Path, tiny_open_clip_dir: Path, tmp_path: Path) -> None:
    results = search_cmd(tiny_open_clip_dir, tmp_path / "idx", "--text", "a rocket launch", "-k", "6",
                         "--workers", "0", "--no-draft", str(photos))
    expected = brute_force(tiny_open_clip_dir, "a rocket launch", sorted(photos.glob("*.jpg")))
    assert [r["rank"] for r in results] == list(range(1, 7))
    assert [r["path"] for r in results] == [os.path.abspath(p) for p, _ in expected]
    np.testing.assert_allclose([r["score"] for r in results], [s for _, s in expected], atol=2e-3)


def test_search_by_image_finds_itself_first(photos: Path, tiny_open_clip_dir: Path, tmp_path: Path) -> None:
    results = search_cmd(tiny_open_clip_dir, tmp_path / "idx", "--image", str(photos / "coffee.jpg"), str(photos))
    assert Path(results[0]["path"]).name == "coffee.jpg" and results[0]["score"] > 0.99


def test_paths_only_chains_into_another_command(photos: Path, tiny_open_clip_dir: Path, tiny_timm_dir: Path,
                                                tmp_path: Path) -> None:
    found = runner.invoke(app, ["search", "--text", "a cat", "--paths-only", "-k", "3", str(photos),
                                "--model", str(tiny_open_clip_dir), "--index", str(tmp_path / "idx")])
    paths = found.stdout.splitlines()
    assert len(paths) == 3 and all(os.path.isfile(p) for p in paths)
    chained = runner.invoke(app, ["classify", "--files-from", "-", "--model", str(tiny_timm_dir)], input=found.stdout)
    assert [r["path"] for r in parse_jsonl(chained.stdout)] == paths
    nul = runner.invoke(app, ["search", "--text", "a cat", "--paths-only", "--print0", "-k", "2",
                              "--model", str(tiny_open_clip_dir), "--index", str(tmp_path / "idx")])
    assert nul.stdout.count("\0") == 2 and "\n" not in nul.stdout


def test_threshold_and_folder_restriction(photos: Path, tiny_open_clip_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(SAMPLE_DATA / "rocket.jpg", other / "r.jpg")
    index_dir = tmp_path / "idx"
    index_cmd(photos, tiny_open_clip_dir, index_dir)
    index_cmd(other, tiny_open_clip_dir, index_dir)
    everything = search_cmd(tiny_open_clip_dir, index_dir, "--text", "x", "-k", "100")
    assert len(everything) == 7
    only_other = search_cmd(tiny_open_clip_dir, index_dir, "--text", "x", str(other))
    assert [Path(r["path"]).name for r in only_other] == ["r.jpg"]
    cut = everything[2]["score"]
    assert all(r["score"] >= cut for r in search_cmd(tiny_open_clip_dir, index_dir, "--text", "x", "--threshold", str(cut)))


def test_sql_metacharacters_are_literal(photos: Path, tiny_open_clip_dir: Path, tmp_path: Path) -> None:
    tricky = photos / "100%_'; DROP TABLE files; --.jpg"
    shutil.copy(SAMPLE_DATA / "coffee.jpg", tricky)
    results = search_cmd(tiny_open_clip_dir, tmp_path / "idx", "--text", "'; DROP TABLE files; -- %_", "-k", "20", str(photos))
    assert str(tricky) in [r["path"] for r in results] and len(results) == 7


def test_index_made_with_another_model_is_refused(photos: Path, tiny_open_clip_dir: Path, tmp_path: Path) -> None:
    import open_clip
    from safetensors.torch import save_file

    from tests.conftest import TINY_CLIP_CONFIG

    other = tmp_path / "other-clip"
    other.mkdir()
    shutil.copy(tiny_open_clip_dir / "open_clip_config.json", other / "open_clip_config.json")
    torch.manual_seed(5)
    save_file({k: v.contiguous() for k, v in open_clip.CLIP(**TINY_CLIP_CONFIG).state_dict().items()},
              str(other / "open_clip_model.safetensors"))
    index_dir = tmp_path / "idx"
    index_cmd(photos, tiny_open_clip_dir, index_dir)
    refused = runner.invoke(app, ["search", "--text", "x", "--model", str(other), "--index", str(index_dir)])
    assert refused.exit_code == 2 and "--rebuild" in refused.stderr
    rebuilt = index_cmd(photos, other, index_dir, "--rebuild")
    assert rebuilt["added"] == 6


def test_search_html_contact_sheet(photos: Path, tiny_open_clip_dir: Path, tmp_path: Path) -> None:
    sheet = tmp_path / "sheet.html"
    result = runner.invoke(app, ["search", "--text", "a cat", "-k", "4", str(photos), "--html", str(sheet),
                                 "--model", str(tiny_open_clip_dir), "--index", str(tmp_path / "idx")])
    assert result.exit_code == 1  # the broken samples in the folder
    assert sheet.read_text().count('class="tile"') == 4


def test_label_html_contact_sheet(tiny_open_clip_dir: Path, mixed_samples: Path, tmp_path: Path) -> None:
    sheet = tmp_path / "labels.html"
    runner.invoke(app, ["label", str(mixed_samples), "--labels", "cat,dog", "--model", str(tiny_open_clip_dir),
                        "--html", str(sheet)])
    text = sheet.read_text()
    assert text.count('class="tile"') == 9 and "empty file (0 bytes)" in text


def test_usage_errors(tiny_open_clip_dir: Path, tmp_path: Path) -> None:
    base = ["search", "--model", str(tiny_open_clip_dir), "--index", str(tmp_path / "idx")]
    assert runner.invoke(app, base + ["--text", "a", "--image", "b.jpg"]).exit_code == 2
    empty = runner.invoke(app, base + ["--text", "a"])
    assert empty.exit_code == 2 and "vitkit index" in empty.stderr


def test_second_indexer_is_told_the_index_is_locked_while_search_works(photos: Path, tiny_open_clip_dir: Path,
                                                                       tmp_path: Path) -> None:
    from vitkit.retrieval.index import VectorIndex
    from vitkit.retrieval.update import get_model_key
    from vitkit.models.registry import SEARCH, resolve

    index_dir = tmp_path / "idx"
    index_cmd(photos, tiny_open_clip_dir, index_dir)
    spec = resolve(str(tiny_open_clip_dir), SEARCH)
    with VectorIndex.open_for_writing(index_dir, get_model_key(spec), 32):
        blocked = runner.invoke(app, ["index", str(photos), "--model", str(tiny_open_clip_dir), "--index", str(index_dir)])
        assert blocked.exit_code == 2 and "locked" in blocked.stderr and "--wait" in blocked.stderr
        assert len(search_cmd(tiny_open_clip_dir, index_dir, "--text", "a cat", "-k", "3")) == 3


def test_failed_files_are_remembered_until_they_change(photos: Path, tiny_open_clip_dir: Path, tmp_path: Path) -> None:
    index_dir = tmp_path / "idx"
    args = ["index", str(photos), "--model", str(tiny_open_clip_dir), "--index", str(index_dir), "--format", "json"]
    first = runner.invoke(app, args)
    assert first.exit_code == 1  # the first failure is news
    assert (json.loads(first.stdout)[0]["failed"], json.loads(first.stdout)[0]["failed_unchanged"]) == (3, 0)
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.stderr  # nothing changed: not retried, not an error again
    row = json.loads(again.stdout)[0]
    assert (row["failed"], row["failed_unchanged"], row["unchanged"]) == (0, 3, 6)
    assert "3 files failed before and have not changed" in again.stderr and "error:" not in again.stderr
    listed = runner.invoke(app, ["index", "--failed", "--index", str(index_dir), "--format", "json"])
    assert listed.exit_code == 0, listed.stderr
    failures = json.loads(listed.stdout)
    assert [Path(f["path"]).name for f in failures] == ["empty.jpg", "not_an_image.jpg", "truncated.jpg"]
    assert all(f["reason"] and f["size"] >= 0 for f in failures)
    (photos / "broken" / "empty.jpg").write_bytes(b"still not a picture")  # changed: tried once more
    third = runner.invoke(app, args)
    assert third.exit_code == 1
    assert (json.loads(third.stdout)[0]["failed"], json.loads(third.stdout)[0]["failed_unchanged"]) == (1, 2)
    as_csv = runner.invoke(app, ["index", "--failed", "--index", str(index_dir), "--format", "csv"])
    assert as_csv.stdout.splitlines()[0] == "path,reason,size,mtime_ns"
    for broken in (photos / "broken").iterdir():
        broken.unlink()
    assert runner.invoke(app, args).exit_code == 0  # the deleted files' failures are swept
    none_left = runner.invoke(app, ["index", "--failed", "--index", str(index_dir), "--format", "json"])
    assert none_left.exit_code == 0 and json.loads(none_left.stdout) == []  # an empty list, not nothing


def test_compact_flag_and_automatic_compaction(photos: Path, tiny_open_clip_dir: Path, tmp_path: Path) -> None:
    index_dir = tmp_path / "idx"
    index_cmd(photos, tiny_open_clip_dir, index_dir)
    before = search_cmd(tiny_open_clip_dir, index_dir, "--text", "a cat", "-k", "10")
    (photos / before[-1]["path"]).unlink()
    swept = index_cmd(photos, tiny_open_clip_dir, index_dir)
    assert (swept["removed"], swept["compacted"]) == (1, 0)  # 1 dead of 6: kept for reuse
    compacted = runner.invoke(app, ["index", "--compact", "--index", str(index_dir), "--format", "json"])
    assert compacted.exit_code == 0, compacted.stderr
    assert json.loads(compacted.stdout) == [{"index": str(index_dir), "compacted": 1}]
    assert sorted(p.name for p in index_dir.glob("vectors*.f16")) == ["vectors.1.f16"]
    assert (index_dir / "vectors.1.f16").stat().st_size == 5 * 32 * 2
    assert search_cmd(tiny_open_clip_dir, index_dir, "--text", "a cat", "-k", "10") == before[:-1]
    for record in before[:3]:
        os.unlink(record["path"])
    auto = index_cmd(photos, tiny_open_clip_dir, index_dir)
    assert (auto["removed"], auto["compacted"]) == (3, 3)  # 3 dead of 5: over half, compacted by itself
    assert (index_dir / "vectors.2.f16").stat().st_size == 2 * 32 * 2
    ranked = [(r["path"], r["score"]) for r in search_cmd(tiny_open_clip_dir, index_dir, "--text", "a cat", "-k", "10")]
    assert ranked == [(r["path"], r["score"]) for r in before[3:-1]]


_IMPORTS_AFTER = """
import runpy, sys
try:
    runpy.run_module("vitkit", run_name="__main__")
except SystemExit as exit:
    code = exit.code
print("exit", code, "loaded", *sorted({"torch", "open_clip", "timm"} & set(sys.modules)), file=sys.stderr)
"""


def test_a_no_op_index_loads_no_model_and_imports_no_torch(photos: Path, tiny_open_clip_dir: Path,
                                                           tmp_path: Path) -> None:
    import subprocess
    import sys

    index_dir = tmp_path / "idx"
    command = [sys.executable, "-c", _IMPORTS_AFTER, "index", str(photos), "--model", str(tiny_open_clip_dir),
               "--index", str(index_dir), "--format", "json"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert "exit 1 loaded open_clip timm torch" in first.stderr  # something to embed: the model loads
    noop = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert noop.stderr.strip().endswith("exit 0 loaded"), noop.stderr
    row = json.loads(noop.stdout)[0]
    assert (row["added"], row["unchanged"], row["failed_unchanged"]) == (0, 6, 3)


def test_library_functions_need_no_reporter(photos: Path, tiny_open_clip_dir: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from vitkit.retrieval.search import search_images
    from vitkit.retrieval.update import IndexOptions, index_folders

    options = IndexOptions(index_dir=str(tmp_path / "idx"), model=str(tiny_open_clip_dir))
    first = index_folders([str(photos)], options)
    assert (first.counts.added, first.counts.failed) == (6, 3) and first.task is not None
    again = index_folders([str(photos)], options)
    assert again.task is None and again.counts.unchanged == 6  # nothing to embed: no model
    result = search_images("a cat", None, [str(photos)], top_k=3, options=options)
    assert len(result.hits) == 3 and result.counts.failed_unchanged == 3
    assert capsys.readouterr().err == ""  # quiet by default: no CLI reporter needed
