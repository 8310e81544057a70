"""The library front door, used only through `import vitkit`: one function per command, records lazily."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import vitkit
from conftest import BROKEN_SAMPLES, GOOD_SAMPLES, SAMPLE_DATA, parse_jsonl, run_vitkit


def test_the_three_line_example_gives_the_cli_records(photos: Path, tiny_timm_dir: Path) -> None:
    seen = []
    for record in vitkit.classify(str(photos), model=str(tiny_timm_dir), top_k=3):
        seen.append(record)
        if record.ok:
            print(record.path, record.predictions[0].label)
    cli = run_vitkit("classify", str(photos), "--model", str(tiny_timm_dir), "--top-k", "3")
    assert cli.returncode == 1
    assert [r.to_dict() for r in seen] == parse_jsonl(cli.stdout)  # same schema, order and values
    assert len(seen) == len(GOOD_SAMPLES) + len(BROKEN_SAMPLES)
    good = [r for r in seen if r.ok]
    assert len(good) == len(GOOD_SAMPLES) and all(len(r.predictions) == 3 for r in good)
    first = good[0].predictions[0]
    assert first.label == first["label"] and isinstance(first.class_id, int) and 0 <= first.score <= 1
    assert good[0].width > 0 and good[0].height > 0 and good[0].error is None


def test_a_bad_file_is_a_record_in_its_own_place_never_an_exception(tiny_timm_dir: Path) -> None:
    inputs = [str(SAMPLE_DATA / "chelsea.jpg"), str(SAMPLE_DATA / "broken" / "truncated.jpg"),
              str(SAMPLE_DATA / "missing.jpg"), str(SAMPLE_DATA / "rocket.jpg")]
    records = list(vitkit.classify(inputs, model=str(tiny_timm_dir), top_k=1))
    assert [r.path for r in records] == inputs
    assert [r.ok for r in records] == [True, False, False, True]
    assert set(records[1].to_dict()) == {"path", "error"} and records[1].error
    with pytest.raises(AttributeError):
        records[1].predictions  # an error record has no task fields


def test_records_come_lazily(tiny_timm_dir: Path) -> None:
    records = vitkit.classify(str(SAMPLE_DATA), model=str(tiny_timm_dir), batch_size=1, workers=0)
    first = next(records)
    assert first.path == str(SAMPLE_DATA / GOOD_SAMPLES[0]) and first.ok
    records.close()


def test_pil_images_are_inputs(tiny_timm_dir: Path, tmp_path: Path) -> None:
    from PIL import Image

    png = tmp_path / "chelsea.png"
    Image.open(SAMPLE_DATA / "chelsea.jpg").save(png)
    one_at_a_time = {"model": str(tiny_timm_dir), "batch_size": 1, "workers": 0}  # BLAS bits depend on the batch
    from_file = next(vitkit.classify(str(png), **one_at_a_time))
    in_memory = Image.open(png).copy()  # no filename: named by its place
    opened = Image.open(png)
    records = list(vitkit.classify([in_memory, opened], **one_at_a_time))
    assert [r.path for r in records] == ["<image 0>", str(png)]
    for record in records:
        assert record.to_dict() == {**from_file.to_dict(), "path": record.path}
    sheet = tmp_path / "sheet.html"
    list(vitkit.classify([Image.open(png).copy()], html=str(sheet), **one_at_a_time))
    page = sheet.read_text()
    assert "&lt;image 0&gt;" in page and page.count("data:image/jpeg;base64") == 1  # a thumbnail, not an error tile


def test_embed_gives_unit_vectors(tiny_open_clip_dir: Path) -> None:
    records = list(vitkit.embed(str(SAMPLE_DATA), model=str(tiny_open_clip_dir)))
    vectors = [r.embedding for r in records if r.ok]
    assert len(vectors) == len(GOOD_SAMPLES)
    assert all(v.shape == (32,) and abs(float(np.linalg.norm(v)) - 1) < 1e-3 for v in vectors)


def test_index_and_search(photos: Path, tiny_open_clip_dir: Path, tmp_path: Path) -> None:
    index_dir = str(tmp_path / "idx")
    counts = vitkit.index(str(photos), model=str(tiny_open_clip_dir), index_dir=index_dir)
    assert counts.added == len(GOOD_SAMPLES) and counts.failed == len(BROKEN_SAMPLES) and counts.index == index_dir
    hits = list(vitkit.search(text="a cat", folders=[str(photos)], model=str(tiny_open_clip_dir), top_k=3,
                              index_dir=index_dir))
    assert [h.rank for h in hits] == [1, 2, 3]
    assert all(Path(h.path).parent == photos and -1 <= h.score <= 1 for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    cli = run_vitkit("search", "--text", "a cat", str(photos), "--model", str(tiny_open_clip_dir), "-k", "3",
                     "--index", index_dir)
    assert [h.to_dict() for h in hits] == parse_jsonl(cli.stdout)


def test_load_model_resolves_by_command_name(tiny_open_clip_dir: Path) -> None:
    loaded = vitkit.load_model(str(tiny_open_clip_dir), task="label")
    records = list(vitkit.label(str(SAMPLE_DATA / "chelsea.jpg"), labels=["cat", "dog"], model=loaded))
    assert records[0].ok and {p.label for p in records[0].predictions} == {"cat", "dog"}
    with pytest.raises(vitkit.VitkitError, match="zeroshot"):
        vitkit.load_model(str(tiny_open_clip_dir), task="zeroshot")  # internal names are not commands


def test_bad_options_raise_at_the_call(tiny_timm_dir: Path) -> None:
    with pytest.raises(vitkit.VitkitError, match="threshold"):
        vitkit.detect(str(SAMPLE_DATA), threshold=1.5)
    with pytest.raises(TypeError, match="top_kk"):
        vitkit.classify(str(SAMPLE_DATA), model=str(tiny_timm_dir), top_kk=3)


def test_import_and_help_do_not_import_torch() -> None:
    code = ("import sys, vitkit; vitkit.classify; vitkit.search; vitkit.Record; "
            "import vitkit.cli; assert 'torch' not in sys.modules, 'torch imported'")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).returncode == 0
    probe = ("import sys, runpy; sys.argv = ['vitkit', '--help']\n"
             "try: runpy.run_module('vitkit', run_name='__main__')\n"
             "except SystemExit: pass\n"
             "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.stdout.strip().splitlines()[-1] == "False", result.stderr


def test_index_and_search_use_a_loaded_model_as_it_is(photos: Path, tiny_open_clip_dir: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A model from vitkit.load_model keeps its device and precision: index and search never load it again."""
    import vitkit.models.loading

    loaded = vitkit.load_model(str(tiny_open_clip_dir), task="index", device="cpu", precision="fp32")

    def no_second_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded again")

    monkeypatch.setattr(vitkit.models.loading, "load_model", no_second_load)
    index_dir = str(tmp_path / "idx")
    counts = vitkit.index(str(photos), model=loaded, index_dir=index_dir)
    assert counts.added == len(GOOD_SAMPLES)
    hits = list(vitkit.search(image=str(photos / GOOD_SAMPLES[0]), model=loaded, index_dir=index_dir, top_k=1))
    assert hits[0].path == str(photos / GOOD_SAMPLES[0]) and hits[0].score > 0.999
