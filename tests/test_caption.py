"""`vitkit caption`: batched CoCa decoding against step-by-step references, caption files, the CLI end to end."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from tests.conftest import GOOD_SAMPLES, SAMPLE_DATA, assert_records_in_slots, parse_jsonl
from vitkit.cli import app
from vitkit.models.backends.coca_decoding import beam_search_decode, encode_images_for_decoding, greedy_decode, next_token_logits

runner = CliRunner()
MAX_LENGTH = 16  # the tiny model's context length


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def coca(tiny_coca_dir: Path):
    """The tiny CoCa as open_clip itself loads it, with its transform and tokenizer."""
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tiny_coca_dir}")
    return model.eval(), preprocess, open_clip.get_tokenizer(f"local-dir:{tiny_coca_dir}")


@pytest.fixture(scope="module")
def images(coca) -> torch.Tensor:
    from vitkit.inputs.decode import decode_image

    _, preprocess, _ = coca
    return torch.stack([preprocess(decode_image(str(SAMPLE_DATA / name)).image) for name in GOOD_SAMPLES])


@torch.no_grad()
def reference_greedy(model, image: torch.Tensor, start: list[int], eot: int, max_length: int,
                     min_new_tokens: int = 0) -> list[int]:
    """One image, the whole sequence through CoCa's forward at every step, argmax of the last position."""
    sequence = list(start)
    while len(sequence) < max_length:
        logits = model(image[None], torch.tensor([sequence]), output_labels=False)["logits"][0, -1]
        if len(sequence) - len(start) < min_new_tokens:
            logits[eot] = -math.inf
        sequence.append(int(logits.argmax()))
        if sequence[-1] == eot:
            break
    return sequence[len(start):]


@torch.no_grad()
def normalised_log_prob(model, image: torch.Tensor, start: list[int], generated: list[int]) -> float:
    """Sum of the model's log-probabilities of the generated tokens, divided by their number."""
    logits = model(image[None], torch.tensor([start + generated]), output_labels=False)["logits"][0]
    log_probs = logits.log_softmax(dim=-1)[len(start) - 1:]  # position i predicts token i + 1
    return sum(float(log_probs[i, token]) for i, token in enumerate(generated)) / len(generated)


@pytest.mark.parametrize("prefix,min_new_tokens", [("", 0), ("", 1), ("a photo of", 1)])
def test_greedy_matches_step_by_step_reference(coca, images, prefix: str, min_new_tokens: int) -> None:
    model, _, tokenizer = coca
    sot, eot = tokenizer.sot_token_id, tokenizer.eot_token_id
    prefix_ids = tokenizer.encode(prefix)
    got = greedy_decode(model, images, sot, eot, MAX_LENGTH, prefix=prefix_ids, min_new_tokens=min_new_tokens)
    expected = [reference_greedy(model, image, [sot, *prefix_ids], eot, MAX_LENGTH, min_new_tokens) for image in images]
    assert got == expected
    if not prefix:
        # Some rows stop at eot while others run to max_length: the finished mask is exercised.
        assert any(s[-1] == eot for s in got) and any(eot not in s for s in got)


def test_cached_cross_attention_matches_full_forward(coca, images) -> None:
    from dataclasses import replace

    model, _, tokenizer = coca
    tokens = torch.randint(1, 49000, (len(images) * 2, 7))
    tokens[:, 0] = tokenizer.sot_token_id
    with torch.inference_mode():
        context = encode_images_for_decoding(model, images)
        expected = model(images.repeat_interleave(2, 0), tokens, output_labels=False)["logits"][:, -1]
        cached = next_token_logits(model, tokens, context)
        uncached = next_token_logits(model, tokens, replace(context, cross_kv=None))
    assert context.cross_kv is not None
    torch.testing.assert_close(cached, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(uncached, expected, atol=1e-4, rtol=1e-4)


def test_one_beam_is_greedy(coca, images) -> None:
    model, _, tokenizer = coca
    ids = (tokenizer.sot_token_id, tokenizer.eot_token_id, MAX_LENGTH)
    assert beam_search_decode(model, images, *ids, num_beams=1) == greedy_decode(model, images, *ids)


@pytest.mark.parametrize("num_beams", [2, 4])
def test_beam_search_scores_at_least_greedy(coca, images, num_beams: int) -> None:
    model, _, tokenizer = coca
    sot, eot = tokenizer.sot_token_id, tokenizer.eot_token_id
    greedy = greedy_decode(model, images, sot, eot, MAX_LENGTH)
    beams = beam_search_decode(model, images, sot, eot, MAX_LENGTH, num_beams)
    assert beams != greedy  # the searches differ somewhere, so the comparison says something
    for image, found, baseline in zip(images, beams, greedy):
        assert len(found) <= MAX_LENGTH - 1 and eot not in found[:-1]
        score, greedy_score = (normalised_log_prob(model, image, [sot], s) for s in (found, baseline))
        assert score >= greedy_score - 1e-5


CAPTIONERS = {"coca": "tiny_coca_dir", "vlm": "tiny_llava_dir", "florence": "tiny_florence2_dir"}


@pytest.fixture(params=list(CAPTIONERS))
def captioner_dir(request: pytest.FixtureRequest) -> Path:
    """The caption command's file semantics hold whatever writes the captions: CoCa, a vision-language
    model, or Florence-2's captioning tasks."""
    return request.getfixturevalue(CAPTIONERS[request.param])


def caption_cli(*args: str) -> tuple[int, list[dict], str]:
    result = runner.invoke(app, ["caption", *args])
    return result.exit_code, parse_jsonl(result.stdout), result.stderr


@pytest.mark.parametrize("decoding", [["--greedy"], []])
def test_batched_captions_equal_one_at_a_time(tiny_coca_dir: Path, decoding: list[str]) -> None:
    common = [str(SAMPLE_DATA), "--model", str(tiny_coca_dir), "--workers", "0", *decoding]
    _, batched, _ = caption_cli(*common, "-b", "4")
    _, single, _ = caption_cli(*common, "-b", "1")
    assert batched == single
    assert len({r["caption"] for r in batched if "caption" in r}) > 1  # images get different captions


def test_end_to_end_with_broken_files(captioner_dir: Path, mixed_samples: Path, tmp_path: Path) -> None:
    code, records, stderr = caption_cli(str(mixed_samples), "--model", str(captioner_dir))
    assert code == 1 and "3 of 9 inputs failed" in stderr
    for record in assert_records_in_slots(records, mixed_samples, {"path", "width", "height", "caption"}):
        assert isinstance(record["caption"], str) and record["caption"].strip()
    csv_file = tmp_path / "captions.csv"
    code, _, _ = caption_cli(str(SAMPLE_DATA / "coffee.jpg"), "--model", str(captioner_dir), "-o", str(csv_file))
    assert code == 0 and csv_file.read_text().splitlines()[0] == "path,width,height,caption,error"


@pytest.mark.parametrize("captioner_dir", ["coca", "vlm"], indirect=True)  # Florence-2 refuses --prefix
def test_prefix_starts_every_caption(captioner_dir: Path) -> None:
    code, records, _ = caption_cli(str(SAMPLE_DATA / "chelsea.jpg"), str(SAMPLE_DATA / "rocket.jpg"),
                                   "--model", str(captioner_dir), "--greedy", "--prefix", "A photo of")
    assert code == 0 and all(r["caption"].startswith("A photo of ") for r in records)


def sidecar_mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.rglob("*.txt")}


def test_sidecars_written_skipped_and_overwritten(captioner_dir: Path, photos: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    base = [str(photos), "--model", str(captioner_dir), "--greedy", "--workers", "0", "--sidecar"]
    code, records, _ = caption_cli(*base)
    assert code == 1  # the broken files
    captions = {Path(r["path"]).stem: r["caption"] for r in records if "caption" in r}
    assert len(captions) == len(GOOD_SAMPLES)
    for stem, caption in captions.items():
        assert (photos / f"{stem}.txt").read_bytes() == (caption + "\n").encode("utf-8")
    assert not list((photos / "broken").glob("*.txt")) and not list(photos.rglob(".*"))  # no temp files left
    for path in photos.glob("*.txt"):
        os.utime(path, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    before = sidecar_mtimes(photos)

    code, records, stderr = caption_cli(*base)
    assert sidecar_mtimes(photos) == before
    assert f"{len(GOOD_SAMPLES)} skipped: caption file exists; use --on-exists overwrite" in stderr
    assert code == 1 and all("error" in r for r in records)  # only the broken files ran

    code, records, _ = caption_cli(*base, "--on-exists", "overwrite")
    after = sidecar_mtimes(photos)
    assert set(after) == set(before) and all(after[name] != before[name] for name in before)
    assert {Path(r["path"]).stem: r["caption"] for r in records if "caption" in r} == captions

    monkeypatch.setattr("vitkit.models.loading.load_model", lambda *args: pytest.fail("nothing to caption, yet loaded"))
    code, records, stderr = caption_cli(str(photos / "coffee.jpg"), *base[1:])
    assert code == 0 and records == [] and "1 skipped" in stderr


def test_sidecar_collision_is_an_error_not_an_overwrite(captioner_dir: Path, tmp_path: Path) -> None:
    shutil.copy(SAMPLE_DATA / "chelsea.jpg", tmp_path / "cat.jpg")
    Image.open(SAMPLE_DATA / "coffee.jpg").save(tmp_path / "cat.png")
    code, records, stderr = caption_cli(str(tmp_path), "--model", str(captioner_dir), "--greedy", "--sidecar")
    assert code == 1
    by_name = {Path(r["path"]).name: r for r in records}
    assert "caption" in by_name["cat.jpg"]
    error = by_name["cat.png"]["error"]
    assert "cat.txt" in error and "cat.jpg" in error and "\n" not in error
    assert (tmp_path / "cat.txt").read_text(encoding="utf-8") == by_name["cat.jpg"]["caption"] + "\n"
    assert "1 of 2 inputs failed (1 sidecar clash)" in stderr  # its own kind in the summary, not "missing"


def test_sidecar_clashes_are_their_own_kind_of_failure(tmp_path: Path) -> None:
    from vitkit.tasks.caption import plan_sidecars
    from vitkit.inputs.discover import InputItem

    items = [InputItem(str(tmp_path / n)) for n in ("cat.jpg", "cat.png")] + [InputItem(str(tmp_path / "gone.jpg"), "no such file")]
    planned = plan_sidecars(items, overwrite=True).items
    assert planned[0].problem is None
    assert [(i.path, i.problem_kind) for i in planned[1:]] == [(items[1].path, "sidecar clash"), (items[2].path, "missing")]


@pytest.mark.parametrize("args,message", [
    (["--greedy", "--beams", "3"], "--greedy and --beams"),
    (["--on-exists", "overwrite"], "--on-exists only applies with --sidecar"),
    (["--max-length", "99"], "--max-length must be between 2 and 16"),
    (["--max-length", "4", "--prefix", "a photo of a"], "with this --prefix"),
])
def test_usage_errors(tiny_coca_dir: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["caption", str(SAMPLE_DATA / "coffee.jpg"), "--model", str(tiny_coca_dir), *args])
    assert result.exit_code == 2 and message in result.stderr


def test_clip_model_cannot_caption(tiny_open_clip_dir: Path) -> None:
    result = runner.invoke(app, ["caption", str(SAMPLE_DATA / "coffee.jpg"), "--model", str(tiny_open_clip_dir)])
    assert result.exit_code == 2 and "cannot caption" in result.stderr


def test_clean_caption() -> None:
    from vitkit.tasks.caption import clean_caption

    assert clean_caption("<start_of_text>a cat sitting on a couch . <end_of_text>!!!") == "a cat sitting on a couch"
    assert clean_caption("a dog 's toy , red  and   blue ") == "a dog's toy, red and blue"
