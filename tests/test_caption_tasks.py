"""`vitkit caption` with Florence-2's own captioning tasks: captions against transformers' own path (the
processor on the task token, generate, decode, post_process_generation), the CLI, the `ask` refusal."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import vitkit
from tests.conftest import BROKEN_SAMPLES, GOOD_SAMPLES, SAMPLE_DATA, assert_records_in_slots, displayed, parse_jsonl, run_vitkit
from vitkit.cli import app

runner = CliRunner()
TASKS = {"brief": "<CAPTION>", "detailed": "<DETAILED_CAPTION>", "paragraph": "<MORE_DETAILED_CAPTION>"}
NEW_TOKENS = 47  # the tiny model's default: its 48 decoder positions less the start token

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def image_files(vlm_photos: list[str]) -> list[str]:
    return vlm_photos[:4]


@pytest.fixture(scope="module")
def upstream(tiny_florence2_dir: Path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(tiny_florence2_dir).eval()
    return model, AutoProcessor.from_pretrained(tiny_florence2_dir)


@torch.no_grad()
def reference_caption(model, processor, image: Image.Image, task: str, num_beams: int,
                      tokens: list[int] | None = None) -> str:
    """transformers' own path for one image, as its Florence-2 docs write it (`tokens` gets the number
    of tokens generated)."""
    inputs = processor(text=task, images=image, return_tensors="pt")
    ids = model.generate(**inputs, max_new_tokens=NEW_TOKENS, num_beams=num_beams, do_sample=False)
    if tokens is not None:
        tokens.append(ids.shape[1])
    text = processor.batch_decode(ids, skip_special_tokens=False)[0]
    caption = processor.post_process_generation(text, task=task, image_size=image.size)[task]
    return " ".join(caption.split())


@pytest.mark.parametrize("detail,beams", [("brief", None), ("detailed", None), ("paragraph", 1)])
def test_captions_are_transformers_own_at_batch_1_and_batched(upstream, tiny_florence2_dir: Path,
                                                               image_files: list[str], detail: str,
                                                               beams: int | None) -> None:
    model, processor = upstream
    images = [displayed(f) for f in image_files]
    tokens: list[int] = []
    expected = [reference_caption(model, processor, image, TASKS[detail], beams or 3, tokens) for image in images]
    assert len(set(expected)) == len(expected)  # every image its own caption: a mixed-up batch would show
    if detail != "paragraph":  # rows of their own lengths: a batch's shorter rows are padded past their end
        assert len(set(tokens)) > 1  # (greedy paragraphs of the tiny model all run to its limit)
    for batch_size in (1, 3):
        records = list(vitkit.caption(image_files, model=str(tiny_florence2_dir), detail=detail, beams=beams,
                                      batch_size=batch_size, workers=0, draft=False, quiet=True))
        assert [r.caption for r in records] == expected
        assert [(r.width, r.height) for r in records] == [im.size for im in images]


def test_the_checkpoints_generation_settings_are_used(upstream, image_files: list[str]) -> None:
    """Beam search (3 beams, the checkpoint's no_repeat_ngram_size) is not greedy decoding: the default
    path above would not tell them apart if both gave the same captions."""
    model, processor = upstream
    images = [displayed(f) for f in image_files]
    beams = [reference_caption(model, processor, im, "<CAPTION>", 3) for im in images]
    assert beams != [reference_caption(model, processor, im, "<CAPTION>", 1) for im in images]
    assert model.generation_config.no_repeat_ngram_size == 3


def test_detail_levels_are_different_tasks(tiny_florence2_dir: Path) -> None:
    captions = {detail: [r.caption for r in vitkit.caption([str(SAMPLE_DATA / "coffee.jpg")],
                                                           model=str(tiny_florence2_dir), detail=detail,
                                                           workers=0, quiet=True)]
                for detail in TASKS}
    assert len({tuple(c) for c in captions.values()}) == 3


def test_cli_end_to_end_with_sidecars_and_broken_files(tiny_florence2_dir: Path, photos: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A real subprocess with dataloader workers (the processor runs there): records in input order,
    broken files in their slots, each caption in its sidecar file, equal to the library's."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # vitkit's own thread count for the subprocess: see above
    result = run_vitkit("caption", str(photos), "--model", str(tiny_florence2_dir), "--detail", "detailed",
                        "--sidecar", "--workers", "1", "-b", "4")
    records = parse_jsonl(result.stdout)
    assert result.returncode == 1 and f"{len(BROKEN_SAMPLES)} of 9 inputs failed" in result.stderr
    good = assert_records_in_slots(records, photos, {"path", "width", "height", "caption"})
    assert len(good) == len(GOOD_SAMPLES)
    for record in good:
        assert Path(record["path"]).with_suffix(".txt").read_text(encoding="utf-8") == record["caption"] + "\n"
    library = vitkit.caption([r["path"] for r in good], model=str(tiny_florence2_dir), detail="detailed",
                             workers=0, quiet=True)
    assert [r.caption for r in library] == [r["caption"] for r in good]
    assert len({r["caption"] for r in good}) > 1


def test_ask_refuses_a_task_token_model(tiny_florence2_dir: Path) -> None:
    result = runner.invoke(app, ["ask", str(SAMPLE_DATA / "coffee.jpg"), "--model", str(tiny_florence2_dir),
                                 "--question", "Is there a cat?"])
    assert result.exit_code == 2
    assert "not free questions" in result.stderr and "vitkit caption" in result.stderr
    assert "chat template" not in result.stderr
    result = runner.invoke(app, ["ask", str(SAMPLE_DATA / "coffee.jpg"), "--model", "florence-2-b", "-Q", "Cat?"])
    assert result.exit_code == 2 and "cannot ask; it can: caption" in result.stderr  # the catalogue knows first


@pytest.mark.parametrize("args,message", [
    (["--prefix", "A photo of"], "cannot continue a --prefix"),
    (["--max-length", "48"], "must be between 1 and 47"),
    (["--greedy", "--beams", "3"], "--greedy and --beams"),
    (["--processor-option", "do_image_splitting=false"], "not a setting of this model's image processor"),
])
def test_usage_errors(tiny_florence2_dir: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["caption", str(SAMPLE_DATA / "coffee.jpg"), "--model", str(tiny_florence2_dir),
                                 *args])
    assert result.exit_code == 2 and message in result.stderr


def test_task_tokens_are_detected_by_what_the_processor_offers(upstream, tiny_florence2_dir: Path,
                                                               tiny_llava_dir: Path) -> None:
    from transformers import AutoProcessor

    from vitkit.models.registry import resolve_any
    from vitkit.tasks.ask import answers_task_tokens

    assert answers_task_tokens(upstream[1])
    assert not answers_task_tokens(AutoProcessor.from_pretrained(tiny_llava_dir))
    assert "caption" in resolve_any(str(tiny_florence2_dir)).capabilities


def test_catalogue_lists_florence_for_captions() -> None:
    result = runner.invoke(app, ["models", "list", "--task", "caption"])
    assert result.exit_code == 0 and "florence-2-b" in result.stdout
    from vitkit.models.registry import resolve_any

    spec = resolve_any("florence-2-b")
    assert spec.source == "florence-community/Florence-2-base" and spec.capabilities == {"caption"}
    assert spec.params_millions == pytest.approx(231.4)


def test_paragraph_detail_for_a_chat_model_is_a_question(tiny_llava_dir: Path) -> None:
    """--detail paragraph is one more prompt for chat models; Florence-2 runs <MORE_DETAILED_CAPTION> (above)."""
    result = runner.invoke(app, ["caption", str(SAMPLE_DATA / "coffee.jpg"), "-m", str(tiny_llava_dir),
                                 "--detail", "paragraph", "--max-length", "4"])
    assert result.exit_code == 0 and parse_jsonl(result.stdout)[0]["caption"]
    from vitkit.tasks.ask import VlmCaptionTask

    loaded = vitkit.load_model(str(tiny_llava_dir), task="caption", device="cpu")
    prompt = VlmCaptionTask(loaded, "paragraph", 4, None).preprocess.prompts[0]
    assert prompt.endswith("Describe this image in a paragraph.\nASSISTANT:")
