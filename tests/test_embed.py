"""`vitkit embed` and `vitkit.embed`: rows equal the library's own pooled vectors (timm's forward_head
with pre_logits, open_clip's encode_image) on the same preprocessing; .npy + .jsonl and Parquet files
hold one row per ok input in input order."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

import vitkit
from tests.conftest import SAMPLE_DATA, SAMPLE_ERRORS, parse_jsonl, run_vitkit
from tests.corpus import oriented_png
from vitkit.errors import UsageError

# BLAS bits depend on the batch; no draft decoding: the tiny CLIP's 32-pixel input would decode JPEGs at
# a reduced scale, and the references decode them in full.
ONE_AT_A_TIME = {"batch_size": 1, "workers": 0, "draft": False}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two photos, a broken file between them, and a non-square photo stored turned with EXIF orientation 6."""
    folder = tmp_path_factory.mktemp("embed-inputs")
    displayed = Image.open(SAMPLE_DATA / "chelsea.jpg").convert("RGB").crop((0, 0, 300, 200))
    rotated = oriented_png(folder, 6, displayed)
    broken = shutil.copy(SAMPLE_ERRORS / "truncated.jpg", folder / "truncated.jpg")
    return [SAMPLE_DATA / "astronaut.jpg", Path(broken), SAMPLE_DATA / "rocket.jpg", rotated]


def displayed_image(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return ImageOps.exif_transpose(image).convert("RGB")


def timm_reference(model_dir: Path, paths: list[Path], raw: bool) -> np.ndarray:
    import timm
    from timm.data import create_transform, resolve_data_config

    model = timm.create_model(f"local-dir:{model_dir}", pretrained=True).eval()
    transform = create_transform(**resolve_data_config(model=model))
    with torch.no_grad():
        vectors = torch.cat([model.forward_head(model.forward_features(transform(displayed_image(p))[None]),
                                                pre_logits=True) for p in paths])
    return (vectors if raw else torch.nn.functional.normalize(vectors, dim=-1)).numpy()


def open_clip_reference(model_dir: Path, paths: list[Path], raw: bool) -> np.ndarray:
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{model_dir}")
    with torch.no_grad():
        vectors = torch.cat([model.eval().encode_image(preprocess(displayed_image(p))[None]) for p in paths])
    return (vectors if raw else torch.nn.functional.normalize(vectors, dim=-1)).numpy()


def read_npy_pair(target: Path) -> tuple[np.ndarray, list[dict]]:
    return np.load(target), parse_jsonl(target.with_suffix(".jsonl").read_text())


def read_parquet(target: Path) -> tuple[np.ndarray, list[str]]:
    import pyarrow.parquet as pq

    table = pq.read_table(target)
    width = table.schema.field("embedding").type.list_size
    matrix = table["embedding"].combine_chunks().flatten().to_numpy().reshape(-1, width)
    return matrix, table["path"].to_pylist()


@pytest.mark.parametrize("raw", [False, True], ids=["unit", "raw"])
def test_timm_rows_equal_forward_head_pre_logits(tiny_timm_dir: Path, inputs: list[Path], tmp_path: Path,
                                                 raw: bool) -> None:
    target = tmp_path / "emb.npy"
    records = list(vitkit.embed(list(map(str, inputs)), model=str(tiny_timm_dir), output=str(target), raw=raw,
                                **ONE_AT_A_TIME))
    assert [r.ok for r in records] == [True, False, True, True]  # the broken file keeps its slot
    ok = [p for p, r in zip(inputs, records) if r.ok]
    expected = timm_reference(tiny_timm_dir, ok, raw)
    assert expected.shape == (3, 64)  # the pooled width, not the 1000-class head
    matrix, lines = read_npy_pair(target)
    assert matrix.dtype == np.float32
    np.testing.assert_allclose(matrix, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.stack([r.embedding for r in records if r.ok]), expected, atol=1e-5, rtol=0)
    assert lines == [{"row": i, "path": str(p)} for i, p in enumerate(ok)]
    assert [r.row for r in records if r.ok] == [0, 1, 2] and "row" not in records[1].to_dict()
    assert (records[3].width, records[3].height) == (300, 200) != Image.open(inputs[3]).size  # EXIF applied
    norms = np.linalg.norm(matrix, axis=1)
    assert np.allclose(norms, 1, atol=1e-5) != raw  # raw vectors of this model are far from unit length


@pytest.mark.parametrize("raw", [False, True], ids=["unit", "raw"])
def test_open_clip_rows_equal_encode_image_in_parquet(tiny_open_clip_dir: Path, inputs: list[Path],
                                                       tmp_path: Path, raw: bool) -> None:
    target = tmp_path / "emb.parquet"
    records = list(vitkit.embed(list(map(str, inputs)), model=str(tiny_open_clip_dir), output=str(target), raw=raw,
                                **ONE_AT_A_TIME))
    ok = [p for p, r in zip(inputs, records) if r.ok]
    assert len(ok) == 3
    expected = open_clip_reference(tiny_open_clip_dir, ok, raw)
    matrix, paths = read_parquet(target)
    np.testing.assert_allclose(matrix, expected, atol=1e-5, rtol=0)
    assert paths == list(map(str, ok))
    assert np.allclose(np.linalg.norm(matrix, axis=1), 1, atol=1e-5) != raw


def test_float16_rows_are_the_float32_rows_rounded(tiny_timm_dir: Path, inputs: list[Path], tmp_path: Path) -> None:
    files = {}
    for dtype in ("float32", "float16"):
        for suffix in ("npy", "parquet"):
            target = tmp_path / f"{dtype}.{suffix}"
            list(vitkit.embed(list(map(str, inputs)), model=str(tiny_timm_dir), output=str(target), dtype=dtype,
                              **ONE_AT_A_TIME))
            files[dtype, suffix] = np.load(target) if suffix == "npy" else read_parquet(target)[0]
    for suffix in ("npy", "parquet"):
        assert files["float16", suffix].dtype == np.float16 and files["float32", suffix].dtype == np.float32
        assert np.array_equal(files["float16", suffix], files["float32", suffix].astype(np.float16))
        assert not np.array_equal(files["float16", suffix].astype(np.float32), files["float32", suffix])
    assert np.array_equal(files["float32", "npy"], files["float32", "parquet"])


def test_shards_concatenate_to_the_whole_run(tiny_timm_dir: Path, inputs: list[Path], tmp_path: Path) -> None:
    sources = list(map(str, inputs))
    list(vitkit.embed(sources, model=str(tiny_timm_dir), output=str(tmp_path / "all.npy"), **ONE_AT_A_TIME))
    for shard in ("0/2", "1/2"):
        list(vitkit.embed(sources, model=str(tiny_timm_dir), output=str(tmp_path / f"{shard[0]}.npy"), shard=shard,
                          **ONE_AT_A_TIME))
    whole, whole_lines = read_npy_pair(tmp_path / "all.npy")
    parts = [read_npy_pair(tmp_path / f"{i}.npy") for i in "01"]
    assert np.array_equal(np.concatenate([m for m, _ in parts]), whole)
    assert [line["path"] for _, lines in parts for line in lines] == [line["path"] for line in whole_lines]


@pytest.mark.parametrize("fixture, width", [("tiny_timm_dir", 64), ("tiny_open_clip_dir", 32)])
def test_no_ok_input_still_writes_an_empty_matrix_of_the_models_width(fixture: str, width: int, tmp_path: Path,
                                                                      request: pytest.FixtureRequest) -> None:
    target = tmp_path / "emb.npy"
    model = str(request.getfixturevalue(fixture))
    records = list(vitkit.embed(str(SAMPLE_ERRORS / "truncated.jpg"), model=model, output=str(target)))
    assert not records[0].ok
    matrix, lines = read_npy_pair(target)
    assert matrix.shape == (0, width) and lines == []
    assert next(vitkit.embed(str(SAMPLE_DATA / "rocket.jpg"), model=model)).embedding.shape == (width,)


def test_cli_writes_npy_and_jsonl_and_prints_rows(tiny_timm_dir: Path, inputs: list[Path], tmp_path: Path) -> None:
    target = tmp_path / "out" / "emb.npy"
    result = run_vitkit("embed", *map(str, inputs), "-o", str(target), "--model", str(tiny_timm_dir),
                        "-b", "1", "--workers", "0")
    assert result.returncode == 1, result.stderr  # one input failed; the others are written
    records = parse_jsonl(result.stdout)
    assert [set(r) for r in records] == [{"path", "width", "height", "row"}, {"path", "error"},
                                         {"path", "width", "height", "row"}, {"path", "width", "height", "row"}]
    assert [r.get("row") for r in records] == [0, None, 1, 2]
    matrix, lines = read_npy_pair(target)
    ok = [p for p, r in zip(inputs, records) if "error" not in r]
    np.testing.assert_allclose(matrix, timm_reference(tiny_timm_dir, ok, raw=False), atol=1e-5, rtol=0)
    assert [line["path"] for line in lines] == [r["path"] for r in records if "row" in r]
    assert sorted(os.listdir(target.parent)) == ["emb.jsonl", "emb.npy"]  # no temporary files left


def test_cli_parquet_on_sample_photos(tiny_open_clip_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "emb.parquet"
    result = run_vitkit("embed", str(SAMPLE_DATA), "-o", str(target), "--model", str(tiny_open_clip_dir),
                        "--dtype", "float16")
    assert result.returncode == 0, result.stderr
    records = parse_jsonl(result.stdout)
    matrix, paths = read_parquet(target)
    assert paths == [r["path"] for r in records] and [r["row"] for r in records] == list(range(len(records)))
    assert matrix.dtype == np.float16 and matrix.shape == (len(records), 32)
    library = {r.path: r.embedding for r in vitkit.embed(str(SAMPLE_DATA), model=str(tiny_open_clip_dir))}
    np.testing.assert_allclose(matrix.astype(np.float32), np.stack([library[p] for p in paths]), atol=2e-3)


@pytest.mark.parametrize("args, message", [
    ((), "add -o emb.npy"),
    (("-o", "emb.txt"), "embed writes .npy"),
    (("-o", "emb.npy", "--resume"), "cannot --resume"),
])
def test_cli_refuses_what_it_cannot_write(tiny_timm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         args: tuple[str, ...], message: str) -> None:
    from typer.testing import CliRunner

    from vitkit.cli import app

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["embed", str(SAMPLE_DATA / "rocket.jpg"), "--model", str(tiny_timm_dir), *args])
    assert result.exit_code == 2 and message in result.stderr and result.stdout == ""
    assert os.listdir(tmp_path) == []


def test_parquet_without_pyarrow_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from vitkit.outputs.embeddings import check_embedding_output

    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(UsageError) as caught:
        check_embedding_output("emb.parquet", "float32")
    assert "pip install 'vitkit[parquet]'" in caught.value.one_line()


def test_a_model_that_cannot_embed_is_refused(tiny_transformers_classifier_dir: Path) -> None:
    with pytest.raises(vitkit.VitkitError):
        vitkit.embed(str(SAMPLE_DATA / "rocket.jpg"), model=str(tiny_transformers_classifier_dir))


def test_torchrun_gathers_every_ranks_rows_in_input_order(tiny_timm_dir: Path, inputs: list[Path],
                                                          tmp_path: Path) -> None:
    target = tmp_path / "emb.npy"
    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                               "-m", "vitkit", "embed", *map(str, inputs), "-o", str(target), "--model",
                               str(tiny_timm_dir), "-b", "1", "--workers", "0", "--no-draft", "-f", "jsonl"],
                              capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert launched.returncode == 1, launched.stderr
    single = list(vitkit.embed(list(map(str, inputs)), model=str(tiny_timm_dir), **ONE_AT_A_TIME))
    records = parse_jsonl(launched.stdout)
    assert [r["path"] for r in records] == list(map(str, inputs)) and [r.get("row") for r in records] == [0, None, 1, 2]
    matrix, lines = read_npy_pair(target)
    np.testing.assert_allclose(matrix, np.stack([r.embedding for r in single if r.ok]), atol=1e-6, rtol=0)
    assert [line["path"] for line in lines] == [r.path for r in single if r.ok]
    assert json.loads(target.with_suffix(".jsonl").read_text().splitlines()[-1])["path"] == str(inputs[-1])


def test_undecodable_file_names_stay_readable_in_both_files(tiny_open_clip_dir: Path, tmp_path: Path) -> None:
    name = os.fsdecode(b"caf\xe9 =cmd.jpg")  # not UTF-8: a surrogate escape in Python
    shutil.copy(SAMPLE_DATA / "rocket.jpg", tmp_path / name)
    for suffix in ("npy", "parquet"):
        list(vitkit.embed(str(tmp_path / name), model=str(tiny_open_clip_dir), output=str(tmp_path / f"e.{suffix}")))
    assert parse_jsonl((tmp_path / "e.jsonl").read_text(encoding="utf-8"))[0]["path"] == str(tmp_path / name)
    assert read_parquet(tmp_path / "e.parquet")[1] == [f"{tmp_path}/caf\\xe9 =cmd.jpg"]
