"""`vitkit classify` on a transformers `...ForImageClassification` folder: resolved, loaded with the checkpoint's
own processor and id2label, and in parity with transformers' own image-classification pipeline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.conftest import GOOD_SAMPLES, SAMPLE_DATA, parse_jsonl
from vitkit.cli import app
from vitkit.models.registry import CLASSIFY, TRANSFORMERS, resolve

runner = CliRunner()


def pipeline_reference(model_dir: Path, paths: list[Path], k: int) -> list[list[dict]]:
    import transformers
    from transformers import pipeline

    transformers.utils.logging.disable_progress_bar()
    classifier = pipeline("image-classification", model=str(model_dir), device="cpu")
    return [classifier(str(path), top_k=k) for path in paths]


def test_folder_resolves_as_a_transformers_classifier(tiny_transformers_classifier_dir: Path) -> None:
    spec = resolve(str(tiny_transformers_classifier_dir), CLASSIFY)
    assert spec.backend == TRANSFORMERS and spec.capabilities == {CLASSIFY}


@pytest.mark.parametrize("extra", [["-b", "4"], ["-b", "1", "--workers", "0"]])
def test_topk_matches_the_transformers_pipeline(tiny_transformers_classifier_dir: Path, extra: list[str]) -> None:
    paths = [SAMPLE_DATA / name for name in GOOD_SAMPLES]
    result = runner.invoke(app, ["classify", *map(str, paths), "--model", str(tiny_transformers_classifier_dir),
                                 "-k", "3", "--no-draft", "--format", "jsonl", *extra])
    assert result.exit_code == 0, result.stderr
    records = parse_jsonl(result.stdout)
    reference = pipeline_reference(tiny_transformers_classifier_dir, paths, 3)
    label2id = {"cat": 0, "dog": 1, "rocket": 2, "coffee": 3, "camera": 4, "astronaut": 5, "galaxy": 6, "tree": 7,
                "car": 8, "boat": 9}
    for record, expected in zip(records, reference, strict=True):
        assert [p["class_id"] for p in record["predictions"]] == [label2id[e["label"]] for e in expected]
        assert [p["label"] for p in record["predictions"]] == [e["label"] for e in expected]
        np.testing.assert_allclose([p["score"] for p in record["predictions"]], [e["score"] for e in expected],
                                   atol=1e-4, rtol=0)
    # The comparison can fail: images disagree on their top class, and the top score stands out from uniform.
    assert len({r["predictions"][0]["class_id"] for r in records}) > 1
    assert max(r["predictions"][0]["score"] for r in records) > 2 / 10


def test_record_schema_is_timm_classify_s(tiny_transformers_classifier_dir: Path, tiny_timm_dir: Path) -> None:
    image = str(SAMPLE_DATA / GOOD_SAMPLES[0])
    records = {}
    for name, folder in (("hf", tiny_transformers_classifier_dir), ("timm", tiny_timm_dir)):
        result = runner.invoke(app, ["classify", image, "--model", str(folder), "-k", "2", "--format", "jsonl"])
        assert result.exit_code == 0, result.stderr
        [records[name]] = parse_jsonl(result.stdout)
    assert set(records["hf"]) == set(records["timm"]) == {"path", "width", "height", "predictions"}
    for name in ("hf", "timm"):
        assert [set(p) for p in records[name]["predictions"]] == [{"label", "class_id", "score"}] * 2
        assert all(isinstance(p["class_id"], int) and isinstance(p["score"], float) for p in records[name]["predictions"])


def test_models_show_lists_its_class_names(tiny_transformers_classifier_dir: Path) -> None:
    result = runner.invoke(app, ["models", "show", str(tiny_transformers_classifier_dir), "--format", "json"])
    assert result.exit_code == 0, result.stderr
    [row] = json.loads(result.stdout)
    assert row["classes"] == 10 and row["tasks"] == "classify"
    assert row["class_names"] == ["cat", "dog", "rocket", "coffee", "camera"]
    result = runner.invoke(app, ["models", "show", str(tiny_transformers_classifier_dir), "--labels", "--format", "json"])
    [row] = json.loads(result.stdout)
    assert row["class_names"] == ["cat", "dog", "rocket", "coffee", "camera", "astronaut", "galaxy", "tree", "car", "boat"]


def test_a_model_that_cannot_classify_is_refused_in_command_words(tiny_transformers_mae_dir: Path) -> None:
    result = runner.invoke(app, ["classify", str(SAMPLE_DATA / GOOD_SAMPLES[0]), "--model", str(tiny_transformers_mae_dir)])
    assert result.exit_code == 2
    assert "cannot classify; it can: inpaint" in result.stderr


def test_hub_id_is_settled_by_its_cached_config(tiny_transformers_classifier_dir: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """`org/repo` could be any library's; once its config.json is in the hub cache, the head class decides,
    whatever the command would have guessed (classify alone would guess timm)."""
    import shutil

    from huggingface_hub import constants

    repo = tmp_path / "hub" / "models--acme--tiny-vit-classifier"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    shutil.copy(tiny_transformers_classifier_dir / "config.json", snapshot / "config.json")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    from vitkit.models.registry import AmbiguousModelError, resolve_any

    spec = resolve("acme/tiny-vit-classifier", CLASSIFY)
    assert spec.backend == TRANSFORMERS and spec.capabilities == {CLASSIFY} and spec.source == "acme/tiny-vit-classifier"
    assert resolve_any("acme/tiny-vit-classifier").backend == TRANSFORMERS
    with pytest.raises(AmbiguousModelError, match="not in the cache") as info:
        resolve_any("acme/not-cached")
    assert "--task" in info.value.hint
    result = runner.invoke(app, ["models", "show", "acme/tiny-vit-classifier", "--format", "json"])
    [row] = json.loads(result.stdout)
    assert row["classes"] == 10 and row["class_names"][0] == "cat"
