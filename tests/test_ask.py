"""`vitkit ask`: answers against transformers' own generate, choices against summed token log-probs, the CLI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import vitkit
from tests.conftest import BROKEN_SAMPLES, GOOD_SAMPLES, SAMPLE_DATA, parse_jsonl, run_vitkit
from tests.corpus import oriented_png
from vitkit.cli import app

runner = CliRunner()
QUESTION = "Is there a cat in this image?"
NEW_TOKENS = 8
VLMS = ["llava", "idefics3"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def image_files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Photos of different shapes, a wide image (fewer Idefics3 tiles: a shorter prompt, so a batch is
    padded) and an EXIF-rotated one."""
    folder = tmp_path_factory.mktemp("ask-images")
    wide = folder / "wide.png"
    Image.open(SAMPLE_DATA / "rocket.jpg").convert("RGB").resize((300, 60)).save(wide)
    rotated = oriented_png(folder, 6, Image.open(SAMPLE_DATA / "chelsea.jpg").convert("RGB").resize((90, 60)))
    return [str(SAMPLE_DATA / "astronaut.jpg"), str(wide), str(SAMPLE_DATA / "coffee.jpg"), str(rotated),
            str(SAMPLE_DATA / "hubble_deep_field.jpg")]


def vlm_dir(request: pytest.FixtureRequest, name: str) -> Path:
    return request.getfixturevalue(f"tiny_{name}_dir")


def upstream(path: Path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(path)
    processor.tokenizer.padding_side = "left"
    return AutoModelForImageTextToText.from_pretrained(path).eval(), processor


def decoded(files: list[str]) -> list[Image.Image]:
    from vitkit.inputs.decode import decode_image

    return [decode_image(f).image for f in files]  # as vitkit shows the model an image (EXIF applied, RGB)


def prompt_for(processor, question: str) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def until_eos(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos) + 1] if eos in ids else ids


@torch.no_grad()
def reference_generate(model, processor, images: list[Image.Image], question: str) -> list[list[int]]:
    """transformers' own path: one processor call for the whole batch (left-padded), generate, new tokens."""
    prompt = prompt_for(processor, question)
    inputs = processor(images=images, text=[prompt] * len(images), return_tensors="pt", padding=True)
    output = model.generate(**inputs, do_sample=False, max_new_tokens=NEW_TOKENS)
    eos = model.generation_config.eos_token_id
    return [until_eos(row, eos) for row in output[:, inputs["input_ids"].shape[1]:].tolist()]


def vitkit_tokens(path: Path, images: list[Image.Image], question: str) -> list[list[int]]:
    """vitkit's task on the same images: its preprocess and collate, then forward (the runner's part)."""
    from vitkit.inputs.data import ImageMeta
    from vitkit.tasks.ask import AskOptions, AskTask

    loaded = vitkit.load_model(str(path), task="ask", device="cpu")
    task = AskTask(loaded, AskOptions((question,), max_new_tokens=NEW_TOKENS))
    batch = task.collate_inputs([task.preprocess(im, ImageMeta("x", *im.size)) for im in images])
    with torch.inference_mode():
        output = task.forward(batch)[0]
    eos = task.model.module.generation_config.eos_token_id
    return [until_eos(row, eos) for row in output.tolist()]


@pytest.mark.parametrize("name", VLMS)
def test_greedy_answers_are_generates_tokens_at_batch_1_and_batched(request, name: str, image_files: list[str]) -> None:
    path = vlm_dir(request, name)
    model, processor = upstream(path)
    images = decoded(image_files)
    one_by_one = [reference_generate(model, processor, [image], QUESTION)[0] for image in images]
    assert reference_generate(model, processor, images, QUESTION) == one_by_one  # left padding changes nothing
    assert vitkit_tokens(path, images, QUESTION) == one_by_one
    assert vitkit_tokens(path, images[1:2], QUESTION) == one_by_one[1:2]
    texts = [processor.decode(ids, skip_special_tokens=True).strip() for ids in one_by_one]
    for batch_size in (1, 3):
        records = list(vitkit.ask(image_files, model=str(path), question=QUESTION, max_new_tokens=NEW_TOKENS,
                                  batch_size=batch_size, workers=0, draft=False, quiet=True))
        assert [r.answers[0].answer for r in records] == texts
        assert [(r.width, r.height) for r in records] == [im.size for im in images]
    if name == "llava":
        assert len(set(texts)) > 1  # the image changes the answer: a mixed-up batch would show


@torch.no_grad()
def reference_choice_probabilities(model, processor, image: Image.Image, question: str,
                                   choices: list[str]) -> list[float]:
    """Each choice appended to the prompt alone (no padding), its tokens' log-probs summed; softmax over choices."""
    inputs = processor(images=[image], text=[prompt_for(processor, question)], return_tensors="pt")
    scores = []
    for choice in choices:
        ids = processor.tokenizer(choice, add_special_tokens=False)["input_ids"]
        full = torch.cat([inputs["input_ids"], torch.tensor([ids])], dim=1)
        length = inputs["input_ids"].shape[1]  # per-token extras (Qwen2-VL's mm_token_type_ids) grow with the choice
        pixels = {k: torch.cat([v, v.new_zeros((1, len(ids)))], dim=1) if v.shape == (1, length) else v
                  for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
        logits = model(input_ids=full, attention_mask=torch.ones_like(full), **pixels).logits[0].double()
        log_probs = logits.log_softmax(dim=-1)
        start = inputs["input_ids"].shape[1]
        scores.append(sum(float(log_probs[start - 1 + j, token]) for j, token in enumerate(ids)))
    return torch.tensor(scores).softmax(dim=0).tolist()


@pytest.mark.parametrize("name", VLMS)
def test_choice_probabilities_equal_summed_token_log_probs(request, name: str, image_files: list[str]) -> None:
    path = vlm_dir(request, name)
    model, processor = upstream(path)
    choices = ["yes", "no", "a photo of a dog"]  # of different token lengths: rows are padded
    assert len({len(processor.tokenizer(c, add_special_tokens=False)["input_ids"]) for c in choices}) > 1
    records = list(vitkit.ask(image_files, model=str(path), question=[QUESTION, "What colour is the sky?"],
                              choices=choices, batch_size=3, workers=0, draft=False, quiet=True))
    for record, image in zip(records, decoded(image_files)):
        for answer in record.answers:
            expected = reference_choice_probabilities(model, processor, image, answer.question, choices)
            got = [answer.scores[c] for c in choices]
            assert got == pytest.approx(expected, abs=1e-5)
            assert answer.answer == choices[max(range(len(choices)), key=got.__getitem__)]


def test_choices_with_flattened_patches_score_each_image_against_itself(tiny_qwen2vl_dir: Path,
                                                                         image_files: list[str]) -> None:
    """Qwen2-VL's pixel_values are every image's patches in one (N, D) tensor: each image's block must go
    with its own choice rows, not patch by patch."""
    model, processor = upstream(tiny_qwen2vl_dir)
    choices = ["yes", "no", "a photo of a dog"]
    files = image_files[:2]
    records = list(vitkit.ask(files, model=str(tiny_qwen2vl_dir), question=QUESTION, choices=choices, batch_size=2,
                              workers=0, draft=False, quiet=True, device="cpu"))
    for record, image in zip(records, decoded(files)):
        expected = reference_choice_probabilities(model, processor, image, QUESTION, choices)
        assert [record.answers[0].scores[c] for c in choices] == pytest.approx(expected, abs=1e-7)


def test_flattened_patches_are_repeated_image_by_image() -> None:
    from vitkit.tasks.ask_choices import _per_row

    grid = torch.tensor([[1, 2, 2], [1, 2, 4]])  # 4 patches, then 8
    patches = torch.arange(12.0)[:, None].expand(12, 3)
    rows = _per_row({"pixel_values": patches, "image_grid_thw": grid}, count=2)
    first, second = patches[:4], patches[4:]
    assert torch.equal(rows["pixel_values"], torch.cat([first, first, second, second]))
    assert torch.equal(rows["image_grid_thw"], grid.repeat_interleave(2, dim=0))
    batched = _per_row({"pixel_values": torch.arange(6.0).view(2, 3)}, count=3)["pixel_values"]
    assert batched[:, 0].tolist() == [0, 0, 0, 3, 3, 3]


def ask_cli(*args: str) -> tuple[int, list[dict], str]:
    result = runner.invoke(app, ["ask", *args])
    return result.exit_code, parse_jsonl(result.stdout), result.stderr


def test_broken_files_keep_their_slots(tiny_llava_dir: Path, mixed_samples: Path, tmp_path: Path) -> None:
    questions = tmp_path / "questions.txt"
    questions.write_text("# asked of every image\nWhat colour is the sky?\n\n")
    code, records, stderr = ask_cli(str(mixed_samples), "--model", str(tiny_llava_dir), "-Q", QUESTION,
                                    "--questions-file", str(questions), "--max-new-tokens", "4", "-b", "4")
    assert code == 1 and "3 of 9 inputs failed" in stderr
    expected_order = sorted([*GOOD_SAMPLES, *(f"broken/{n}" for n in BROKEN_SAMPLES)])
    assert [os.path.relpath(r["path"], mixed_samples) for r in records] == expected_order
    for record in records:
        if "broken" in record["path"]:
            assert set(record) == {"path", "error"}
        else:
            assert set(record) == {"path", "width", "height", "answers"}
            assert [a["question"] for a in record["answers"]] == [QUESTION, "What colour is the sky?"]
            assert all(isinstance(a["answer"], str) for a in record["answers"])


def test_keep_filters_images_for_a_shell_pipeline(tiny_llava_dir: Path, mixed_samples: Path) -> None:
    """The command line, in a real process, prints the paths whose records match, as the library reports them."""
    records = [r for r in vitkit.ask(mixed_samples, model=str(tiny_llava_dir), question=QUESTION, choices="yes,no",
                                     keep="yes", workers=0, quiet=True) if r.ok]
    yes = sorted(r.answers[0].scores["yes"] for r in records)
    threshold = (yes[len(yes) // 2 - 1] + yes[len(yes) // 2]) / 2  # half the images pass
    assert all(r.match == (r.answers[0].scores["yes"] >= 0.5) for r in records)
    result = run_vitkit("ask", str(mixed_samples), "--model", str(tiny_llava_dir), "-Q", QUESTION, "--choices",
                        "yes,no", "--keep", "yes", "--threshold", f"{threshold:.9f}", "--paths-only", "--workers", "0")
    expected = [r.path for r in records if r.answers[0].scores["yes"] >= threshold]
    assert result.returncode == 1 and 0 < len(expected) < len(records)  # the broken files fail; never printed
    assert result.stdout.splitlines() == expected


def test_library_records(tiny_llava_dir: Path) -> None:
    records = list(vitkit.ask([str(SAMPLE_DATA / "coffee.jpg"), Image.open(SAMPLE_DATA / "rocket.jpg")],
                              model=str(tiny_llava_dir), question=QUESTION, choices=["yes", "no"], keep="no",
                              threshold=0.0, quiet=True))
    assert [r.path for r in records][0].endswith("coffee.jpg") and len(records) == 2
    assert all(r.match and sum(r.answers[0].scores.values()) == pytest.approx(1.0) for r in records)


def test_sampling_is_seeded(tiny_llava_dir: Path) -> None:
    def answers(*args: str) -> list[str]:
        code, records, _ = ask_cli(str(SAMPLE_DATA / "coffee.jpg"), str(SAMPLE_DATA / "rocket.jpg"), "--model",
                                   str(tiny_llava_dir), "-Q", QUESTION, "--max-new-tokens", "6", "--workers", "0",
                                   *args)
        assert code == 0
        return [r["answers"][0]["answer"] for r in records]

    sampled = answers("--temperature", "3", "--seed", "1")
    assert answers("--temperature", "3", "--seed", "1") == sampled
    assert answers() != sampled and answers("--temperature", "3", "--seed", "2") != sampled


def test_system_prompt_only_when_asked(tiny_llava_dir: Path) -> None:
    from vitkit.tasks.ask import AskOptions, AskTask

    loaded = vitkit.load_model(str(tiny_llava_dir), task="ask", device="cpu")
    plain = AskTask(loaded, AskOptions((QUESTION,))).preprocess.prompts
    assert plain == (f"USER: <image>\n{QUESTION}\nASSISTANT:",)
    told = AskTask(loaded, AskOptions((QUESTION,), system="Answer in one word.")).preprocess.prompts
    assert told == (f"SYSTEM: Answer in one word.\nUSER: <image>\n{QUESTION}\nASSISTANT:",)


@pytest.mark.parametrize("args,message", [
    ([], "no question given"),
    (["-Q", "q", "--seed", "3"], "--seed only applies when sampling"),
    (["-Q", "q", "--choices", "yes"], "at least two choices"),
    (["-Q", "q", "--choices", "yes,no", "--keep", "maybe"], "not one of the choices"),
    (["-Q", "q", "--threshold", "0.7"], "--threshold applies to --keep"),
    (["-Q", "q", "--choices", "yes,no", "--keep", "yes", "--threshold", "1.5"], "not a probability"),
    (["-Q", "q", "--paths-only"], "--paths-only prints the images"),
    (["-Q", "q", "--choices", "yes,no", "--temperature", "1"], "--temperature samples answers"),
])
def test_usage_errors(tiny_llava_dir: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["ask", str(SAMPLE_DATA / "coffee.jpg"), "--model", str(tiny_llava_dir), *args])
    assert result.exit_code == 2 and message in result.stderr


def test_a_classifier_cannot_ask(tiny_timm_dir: Path) -> None:
    result = runner.invoke(app, ["ask", str(SAMPLE_DATA / "coffee.jpg"), "--model", str(tiny_timm_dir), "-Q", "q"])
    assert result.exit_code == 2 and "cannot ask" in result.stderr


def test_capability_comes_from_the_config(tiny_llava_dir: Path, tiny_idefics3_dir: Path,
                                          tiny_transformers_classifier_dir: Path) -> None:
    from vitkit.models.registry import resolve_any

    assert {"ask", "caption"} <= resolve_any(str(tiny_llava_dir)).capabilities
    assert {"ask", "caption"} <= resolve_any(str(tiny_idefics3_dir)).capabilities
    assert "ask" not in resolve_any(str(tiny_transformers_classifier_dir)).capabilities


def test_catalogue_model_not_cached_says_how_to_pull() -> None:
    result = runner.invoke(app, ["ask", str(SAMPLE_DATA / "coffee.jpg"), "-Q", "q", "--offline"])
    assert result.exit_code != 0 and "vitkit models pull smolvlm-256m" in result.stderr


def test_vlm_caption_prompts_by_detail(tiny_llava_dir: Path) -> None:
    from vitkit.tasks.ask import VlmCaptionTask

    loaded = vitkit.load_model(str(tiny_llava_dir), task="caption", device="cpu")
    assert "in one sentence" in VlmCaptionTask(loaded, "brief", 8, None).preprocess.prompts[0]
    detailed = VlmCaptionTask(loaded, "detailed", 8, "A photo").preprocess.prompts[0]
    assert detailed.endswith("Describe this image in detail.\nASSISTANT: A photo")
    for args, message in ((["--beams", "3"], "decoded greedily"), (["--detail", "fast"], "--detail")):
        result = runner.invoke(app, ["caption", str(SAMPLE_DATA / "coffee.jpg"), "-m", str(tiny_llava_dir), *args])
        assert result.exit_code == 2 and message in result.stderr
