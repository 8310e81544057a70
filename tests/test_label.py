"""`vitkit label` end to end, and parity with open_clip's own zero-shot reference path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from tests.conftest import GOOD_SAMPLES, SAMPLE_DATA, parse_jsonl
from vitkit.cli import app

LABELS = ["cat", "dog", "rocket", "cup of coffee", "galaxy"]
runner = CliRunner()


def open_clip_reference(model_dir: Path, paths: list[Path], labels: list[str], templates: list[str]) -> np.ndarray:
    """open_clip's preprocess, tokenizer, encode_image/encode_text, normalised dot x logit scale, softmax."""
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{model_dir}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{model_dir}")
    model.eval()
    with torch.no_grad():
        text = []
        for label in labels:
            emb = model.encode_text(tokenizer([t.format(label) for t in templates]))
            emb = emb / emb.norm(dim=-1, keepdim=True)
            mean = emb.mean(0)
            text.append(mean / mean.norm())
        text = torch.stack(text)
        images = torch.stack([preprocess(Image.open(p)) for p in paths])
        feats = model.encode_image(images)
        feats = feats / feats.norm(dim=-1, keepdim=True)
        return (model.logit_scale.exp() * feats @ text.T).softmax(-1).numpy()


@pytest.mark.parametrize("template_args,templates", [
    ([], None),
    (["--template", "a photo of a {}.", "--template", "a drawing of a {}."], ["a photo of a {}.", "a drawing of a {}."]),
])
def test_probabilities_match_open_clip(tiny_open_clip_dir: Path, template_args: list[str], templates) -> None:
    from vitkit.tasks.zeroshot import get_builtin_templates

    templates = templates or get_builtin_templates("imagenet7")
    paths = [SAMPLE_DATA / n for n in GOOD_SAMPLES]
    # --no-draft: the tiny model's 32 px input would otherwise let every sample JPEG decode at 1/8 scale.
    result = runner.invoke(app, ["label", *map(str, paths), "--model", str(tiny_open_clip_dir), "--no-draft",
                                 "--labels", ",".join(LABELS), "-k", str(len(LABELS)), *template_args])
    assert result.exit_code == 0, result.stderr
    reference = open_clip_reference(tiny_open_clip_dir, paths, LABELS, templates)
    for record, expected in zip(parse_jsonl(result.stdout), reference, strict=True):
        got = {p["label"]: p["score"] for p in record["predictions"]}
        np.testing.assert_allclose([got[label] for label in LABELS], expected, atol=1e-4, rtol=0)
        assert [p["label"] for p in record["predictions"]] == [LABELS[i] for i in np.argsort(-expected, kind="stable")]


def test_label_set_is_encoded_once_per_run(tiny_open_clip_dir: Path, mixed_samples: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import open_clip

    calls = []
    original = open_clip.CLIP.encode_text

    def counting(self, text, normalize=False):
        calls.append(text.shape[0])
        return original(self, text, normalize=normalize)

    monkeypatch.setattr(open_clip.CLIP, "encode_text", counting)
    result = runner.invoke(app, ["label", str(mixed_samples), "--model", str(tiny_open_clip_dir),
                                 "--labels", "cat,dog", "--template", "a {}", "-b", "1"])
    assert result.exit_code == 1  # the broken samples
    assert sum(calls) == 2  # two labels x one template, however many images and batches


def test_labels_file_multi_label_and_errors(tiny_open_clip_dir: Path, mixed_samples: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("# animals\ncat\ndog\n\nrocket\n")
    result = runner.invoke(app, ["label", str(mixed_samples), "--model", str(tiny_open_clip_dir),
                                 "--labels-file", str(labels), "--multi-label", "--threshold", "-1"])
    records = parse_jsonl(result.stdout)
    assert len(records) == 9 and sum("error" in r for r in records) == 3
    ok = [r for r in records if "predictions" in r]
    assert all(sorted(p["label"] for p in r["predictions"]) == ["cat", "dog", "rocket"] for r in ok)
    assert all(-1 <= p["score"] <= 1 for r in ok for p in r["predictions"])  # cosine scores for CLIP
    high = runner.invoke(app, ["label", str(SAMPLE_DATA / "chelsea.jpg"), "--model", str(tiny_open_clip_dir),
                               "--labels", "cat,dog", "--multi-label", "--threshold", "1.01"])
    assert parse_jsonl(high.stdout)[0]["predictions"] == []


def test_usage_errors(tiny_open_clip_dir: Path) -> None:
    base = ["label", str(SAMPLE_DATA), "--model", str(tiny_open_clip_dir)]
    assert runner.invoke(app, base).exit_code == 2
    bad_template = runner.invoke(app, [*base, "--labels", "a,b", "--template", "no placeholder"])
    assert bad_template.exit_code == 2 and "{}" in bad_template.stderr
    assert runner.invoke(app, [*base, "--labels", "a,a"]).exit_code == 2


def test_siglip_style_bias_gives_sigmoid_probabilities(tiny_open_clip_dir: Path, tmp_path: Path) -> None:
    """A model with a logit bias (SigLIP) scores labels independently with its own scale and bias."""
    import json
    import shutil

    import open_clip
    from safetensors.torch import save_file

    from tests.conftest import TINY_CLIP_CONFIG

    config = {**TINY_CLIP_CONFIG, "init_logit_bias": -10.0}
    torch.manual_seed(0)
    model = open_clip.CLIP(**config)
    folder = tmp_path / "sig"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": config}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    result = runner.invoke(app, ["label", str(SAMPLE_DATA / "coffee.jpg"), "--model", str(folder),
                                 "--labels", "cat,dog", "--template", "{}", "--multi-label", "--threshold", "0"])
    preds = parse_jsonl(result.stdout)[0]["predictions"]
    with torch.no_grad():
        from vitkit.inputs.decode import decode_image

        _, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
        tok = open_clip.get_tokenizer(f"local-dir:{folder}")
        img = model.encode_image(preprocess(decode_image(str(SAMPLE_DATA / "coffee.jpg")).image)[None], normalize=True)
        txt = model.encode_text(tok(["cat", "dog"]), normalize=True)
        expected = torch.sigmoid(model.logit_scale.exp() * img @ txt.T + model.logit_bias)[0]
    got = {p["label"]: p["score"] for p in preds}
    np.testing.assert_allclose([got["cat"], got["dog"]], expected.numpy(), atol=1e-5)
    shutil.rmtree(folder)


def test_unknown_template_set_lists_the_built_in_ones(tiny_open_clip_dir: Path) -> None:
    result = runner.invoke(app, ["label", str(SAMPLE_DATA / "chelsea.jpg"), "--model", str(tiny_open_clip_dir),
                                 "--labels", "cat,dog", "--templates", "imagenet81"])
    assert result.exit_code == 2
    assert "--templates imagenet81: not a built-in template set and not a file" in result.stderr
    assert "imagenet7, imagenet80, none" in result.stderr and "No such file" not in result.stderr


def test_a_single_label_with_softmax_is_refused_and_multi_label_scores_it(tiny_open_clip_dir: Path) -> None:
    base = ["label", str(SAMPLE_DATA / "chelsea.jpg"), "--model", str(tiny_open_clip_dir), "--labels", "cat"]
    refused = runner.invoke(app, base)
    assert refused.exit_code == 2 and refused.stdout == ""
    assert "scores 1.0 on every image" in refused.stderr and "--multi-label" in refused.stderr
    scored = runner.invoke(app, [*base, "--multi-label", "--threshold", "-1"])
    assert scored.exit_code == 0, scored.stderr
    [prediction] = parse_jsonl(scored.stdout)[0]["predictions"]
    assert prediction["label"] == "cat" and -1 <= prediction["score"] < 1  # a cosine, not a softmax's 1.0
