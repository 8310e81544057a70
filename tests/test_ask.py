"""`vitkit ask`: answers against transformers' own generate, choices against summed token log-probs, the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import vitkit
from tests.conftest import SAMPLE_DATA, assert_records_in_slots, displayed, parse_jsonl, run_vitkit
from vitkit.cli import app

runner = CliRunner()
QUESTION = "Is there a cat in this image?"
NEW_TOKENS = 8
VLMS = ["llava", "idefics3"]
PADDED_VLMS = ["idefics3", "qwen2vl"]  # their prompts' length follows the image's shape: batches are padded


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def image_files(vlm_photos: list[str]) -> list[str]:
    return vlm_photos


def vlm_dir(request: pytest.FixtureRequest, name: str) -> Path:
    return request.getfixturevalue(f"tiny_{name}_dir")


def upstream(path: Path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(path)
    processor.tokenizer.padding_side = "left"
    return AutoModelForImageTextToText.from_pretrained(path).eval(), processor


def decoded(files: list[str]) -> list[Image.Image]:
    return [displayed(f) for f in files]


def prompt_for(processor, question: str) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def until_eos(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos) + 1] if eos in ids else ids


@torch.no_grad()
def reference_generate(model, processor, images: list[Image.Image], question: str,
                       ignore_padding: bool = False, **processor_kwargs) -> list[list[int]]:
    """transformers' own path: one processor call for the whole batch (left-padded), generate, new tokens.
    `ignore_padding` shows the model the pad tokens (an all-ones attention mask): what a batch whose
    padding leaks would answer."""
    prompt = prompt_for(processor, question)
    inputs = processor(images=images, text=[prompt] * len(images), return_tensors="pt", padding=True,
                       **processor_kwargs)
    if ignore_padding:
        inputs["attention_mask"] = torch.ones_like(inputs["attention_mask"])
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


@pytest.mark.parametrize("name", [*VLMS, "qwen2vl"])
def test_greedy_answers_are_generates_tokens_at_batch_1_and_batched(request, name: str, image_files: list[str]) -> None:
    path = vlm_dir(request, name)
    model, processor = upstream(path)
    images = decoded(image_files)
    one_by_one = [reference_generate(model, processor, [image], QUESTION)[0] for image in images]
    assert len(set(map(tuple, one_by_one))) == len(images)  # every image its own answer: a mix-up would show
    assert reference_generate(model, processor, images, QUESTION) == one_by_one  # left padding changes nothing
    if name in PADDED_VLMS:  # and it could have: the same batch with its padding visible answers otherwise
        assert reference_generate(model, processor, images, QUESTION, ignore_padding=True) != one_by_one
    assert vitkit_tokens(path, images, QUESTION) == one_by_one
    assert vitkit_tokens(path, images[1:2], QUESTION) == one_by_one[1:2]
    texts = [processor.decode(ids, skip_special_tokens=True).strip() for ids in one_by_one]
    for batch_size in (1, 3):
        records = list(vitkit.ask(image_files, model=str(path), question=QUESTION, max_new_tokens=NEW_TOKENS,
                                  batch_size=batch_size, workers=0, draft=False, quiet=True))
        assert [r.answers[0].answer for r in records] == texts
        assert [(r.width, r.height) for r in records] == [im.size for im in images]


def test_processor_options_reach_every_processor_call(tiny_idefics3_dir: Path, image_files: list[str]) -> None:
    """SmolVLM read as one view instead of tiles (--processor-option do_image_splitting=false): answers are
    generate's on the processor's inputs with that setting, and differ from the tiled ones."""
    model, processor = upstream(tiny_idefics3_dir)
    # not the 5:1 image: vitkit narrows it to the 3.5:1 the tiny processor's 56-pixel edge can read (SmolVLM's
    # 2048 pixels allow 128:1), which the tiles hide but one 28-pixel view does not
    image_files = [f for f in image_files if not f.endswith("wide.png")]
    images = decoded(image_files)
    questions = [QUESTION, "What colour is the sky?"]
    expected = [[reference_generate(model, processor, [im], q, do_image_splitting=False)[0] for im in images]
                for q in questions]
    assert expected[0] != [reference_generate(model, processor, [im], QUESTION)[0] for im in images]
    records = list(vitkit.ask(image_files, model=str(tiny_idefics3_dir), question=questions, max_new_tokens=NEW_TOKENS,
                              processor_options={"do_image_splitting": False}, batch_size=3, workers=0, draft=False,
                              quiet=True))
    for number, answers in enumerate(expected):
        texts = [processor.decode(ids, skip_special_tokens=True).strip() for ids in answers]
        assert [r.answers[number].answer for r in records] == texts
    from vitkit.tasks.ask import CAPTION_PROMPTS

    captions = vitkit.caption(image_files, model=str(tiny_idefics3_dir), max_length=NEW_TOKENS, workers=0, quiet=True,
                              processor_options=["do_image_splitting=false"], draft=False)
    brief = [reference_generate(model, processor, [im], CAPTION_PROMPTS["brief"], do_image_splitting=False)[0]
             for im in images]
    assert [r.caption for r in captions] == [processor.decode(ids, skip_special_tokens=True).strip() for ids in brief]


def test_a_setting_the_model_cannot_take_is_refused_before_any_image(tiny_qwen2vl_dir: Path) -> None:
    """Qwen2-VL's processor accepts merge_size=1, but its vision tower merges 2 x 2 patches: the blank-image
    trial run refuses it in one line instead of the run failing at its first batch."""
    result = runner.invoke(app, ["ask", str(SAMPLE_DATA / "coffee.jpg"), "--model", str(tiny_qwen2vl_dir), "-Q", "q",
                                 "--processor-option", "merge_size=1"])
    assert result.exit_code == 2 and "the model cannot take images prepared this way" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_coca_refuses_processor_options_before_loading() -> None:
    result = runner.invoke(app, ["caption", str(SAMPLE_DATA / "coffee.jpg"), "--processor-option", "do_resize=false",
                                 "--offline"])  # coca-b32 is not cached here: refused before the load is tried
    assert result.exit_code == 2 and "--processor-option applies to vision-language models" in result.stderr


def test_a_size_setting_moves_the_thin_image_guard(tiny_idefics3_dir: Path) -> None:
    """vitkit narrows images too thin for the processor's longest edge before it sees them: with the run's
    own `size`, by that size (the processor object itself is left as it was)."""
    from transformers import AutoProcessor

    from vitkit.models.backends.hf import processor_max_ratio
    from vitkit.tasks.processor_options import with_settings

    image_processor = AutoProcessor.from_pretrained(tiny_idefics3_dir).image_processor
    own = processor_max_ratio(image_processor)
    smaller = processor_max_ratio(with_settings(image_processor, {"size": {"longest_edge": 28}}))
    assert smaller == pytest.approx(own / 2) and processor_max_ratio(image_processor) == own


@torch.no_grad()
def reference_choice_probabilities(model, processor, image: Image.Image, question: str,
                                   choices: list[str]) -> list[float]:
    """Each choice written as the assistant's reply by the chat template, the conversation up to the end of
    the choice's text run through the processor as one text (no padding), the log-probs of the tokens past
    the generation prompt summed; softmax over the choices."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = prompt_for(processor, question)
    start = processor(images=[image], text=[prompt], return_tensors="pt")["input_ids"].shape[1]
    scores = []
    for choice in choices:
        reply = {"role": "assistant", "content": [{"type": "text", "text": choice}]}
        conversation = processor.apply_chat_template([*messages, reply])
        through_choice = conversation[: conversation.index(choice, len(prompt)) + len(choice)]
        inputs = processor(images=[image], text=[through_choice], return_tensors="pt")
        logits = model(**inputs).logits[0].double()
        log_probs = logits.log_softmax(dim=-1)
        ids = inputs["input_ids"][0, start:].tolist()
        assert ids and inputs["input_ids"].shape[1] == start + len(ids)
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
        assert [record.answers[0].scores[c] for c in choices] == pytest.approx(expected, abs=1e-5)


def test_flattened_patches_travel_one_row_per_image() -> None:
    """Between the dataloader and the model a batch's dim 0 is the image (the runner slices it, choices
    repeat it); the model gets the processor's flattened tensor back, padding dropped."""
    from vitkit.tasks.ask import LeftPadCollate
    from vitkit.tasks.vlm_batch import model_pixels, one_image_patches

    first, second = torch.arange(12.0).view(4, 3), 100 + torch.arange(24.0).view(8, 3)
    items = [one_image_patches({"pixel_values": patches, "image_grid_thw": torch.tensor([grid])})
             for patches, grid in ((first, [1, 2, 2]), (second, [1, 2, 4]))]
    batch = LeftPadCollate(0)(items)
    assert batch["pixel_values"].shape == (2, 8, 3)
    assert torch.equal(model_pixels(batch)["pixel_values"], torch.cat([first, second]))
    repeated = {name: value.repeat_interleave(2, dim=0) for name, value in batch.items()}
    assert torch.equal(model_pixels(repeated)["pixel_values"], torch.cat([first, first, second, second]))
    assert torch.equal(model_pixels({name: value[1:] for name, value in batch.items()})["pixel_values"], second)
    plain = {"pixel_values": torch.zeros(2, 3, 8, 8)}
    assert one_image_patches(plain) is plain and model_pixels(plain) is plain


def test_out_of_memory_halves_a_flattened_patch_batch_image_by_image(tiny_qwen2vl_dir: Path, image_files: list[str],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner's back-off slices a batch along dim 0: each half must hold its images' own patches."""
    from vitkit.inputs.discover import InputItem
    from vitkit.runtime.report import Reporter
    from vitkit.runtime.runner import RunOptions, run
    from vitkit.tasks.ask import AskOptions, AskTask

    loaded = vitkit.load_model(str(tiny_qwen2vl_dir), task="ask", device="cpu")
    task = AskTask(loaded, AskOptions((QUESTION,), max_new_tokens=NEW_TOKENS))
    items, options = [InputItem(f) for f in image_files[:4]], RunOptions(batch_size=4, workers=0)

    def answers() -> list[str]:
        records = run(task, items, options, Reporter(stream=__import__("io").StringIO(), progress=False))
        return [r.to_dict()["answers"][0]["answer"] for r in records]

    clean, forward, sizes = answers(), task.forward, []

    def short_of_memory(batch: dict[str, torch.Tensor]):
        sizes.append(len(batch["image_grid_thw"]))
        if sizes[-1] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (test double)")
        return forward(batch)

    monkeypatch.setattr(task, "forward", short_of_memory)
    assert answers() == clean and sizes[:3] == [4, 2, 1] and len(set(clean)) > 1


def ask_cli(*args: str) -> tuple[int, list[dict], str]:
    result = runner.invoke(app, ["ask", *args])
    return result.exit_code, parse_jsonl(result.stdout), result.stderr


def test_broken_files_keep_their_slots(tiny_llava_dir: Path, mixed_samples: Path, tmp_path: Path) -> None:
    questions = tmp_path / "questions.txt"
    questions.write_text("# asked of every image\nWhat colour is the sky?\n\n")
    code, records, stderr = ask_cli(str(mixed_samples), "--model", str(tiny_llava_dir), "-Q", QUESTION,
                                    "--questions-file", str(questions), "--max-new-tokens", "4", "-b", "4")
    assert code == 1 and "3 of 9 inputs failed" in stderr
    for record in assert_records_in_slots(records, mixed_samples, {"path", "width", "height", "answers"}):
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
    assert answers("--temperature", "3", "--seed", "1", "-b", "2") == sampled  # the batch changes nothing


def test_a_sampled_answer_does_not_depend_on_its_batch_mates(tiny_idefics3_dir: Path, image_files: list[str]) -> None:
    """Alone or among images whose prompts are longer (so its own is padded), an image's sampled answer is
    the same: generate() would draw one random stream for the whole batch."""
    def sampled(files: list[str], batch_size: int) -> list[str]:
        return [r.answers[0].answer for r in vitkit.ask(files, model=str(tiny_idefics3_dir), question=QUESTION,
                                                         temperature=2.0, seed=3, max_new_tokens=NEW_TOKENS,
                                                         batch_size=batch_size, workers=0, draft=False, quiet=True)]

    alone = [sampled([f], 1)[0] for f in image_files]
    assert sampled(image_files, len(image_files)) == alone
    assert sampled(image_files[::-1], 2) == alone[::-1]


def test_sampling_leaves_the_callers_random_state_alone(tiny_llava_dir: Path) -> None:
    """A library caller's own random stream goes on as if no batch had been sampled (the seed is the batch's)."""
    from vitkit.inputs.data import ImageMeta
    from vitkit.tasks.ask import AskOptions, AskTask

    loaded = vitkit.load_model(str(tiny_llava_dir), task="ask", device="cpu")
    task = AskTask(loaded, AskOptions((QUESTION,), max_new_tokens=4, temperature=3.0, seed=1))
    image = decoded([str(SAMPLE_DATA / "coffee.jpg")])[0]
    batch = task.collate_inputs([task.preprocess(image, ImageMeta("x", *image.size))])
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    with torch.inference_mode():
        first, second = task.forward(batch)[0], task.forward(batch)[0]
    assert torch.equal(torch.rand(3), expected) and torch.equal(first, second)


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
    (["-Q", "q", "--processor-option", "do_image_splitting=false"], "not a setting of this model's image processor"),
    (["-Q", "q", "--processor-option", "do_resize=maybe"], "the image processor refused it"),
    (["-Q", "q", "--processor-option", "do_resize"], "is not KEY=VALUE"),
    (["-Q", "q", "--processor-option", "return_tensors=np"], "vitkit sets this itself"),
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


def test_vlm_caption_prompts_by_detail(tiny_llava_dir: Path, tiny_qwen2vl_dir: Path) -> None:
    from vitkit.errors import UsageError
    from vitkit.tasks.ask import AskOptions, AskTask, VlmCaptionTask

    loaded = vitkit.load_model(str(tiny_llava_dir), task="caption", device="cpu")
    assert "in one sentence" in VlmCaptionTask(loaded, "brief", 8, None).preprocess.prompts[0]
    detailed = VlmCaptionTask(loaded, "detailed", 8, "A photo").preprocess.prompts[0]
    assert detailed.endswith("Describe this image in detail.\nASSISTANT: A photo")
    # the prefix begins the reply as the chat template writes one: Qwen's has no space after its header
    qwen = vitkit.load_model(str(tiny_qwen2vl_dir), task="caption", device="cpu")
    assert VlmCaptionTask(qwen, "brief", 8, "A photo").preprocess.prompts[0].endswith(
        "<|im_start|>assistant\nA photo")
    with pytest.raises(UsageError, match="cannot follow an answer prefix"):
        AskTask(loaded, AskOptions((QUESTION,), choices=("yes", "no"), answer_prefix="The answer is"))
    for args, message in ((["--beams", "3"], "decoded greedily"), (["--detail", "fast"], "--detail")):
        result = runner.invoke(app, ["caption", str(SAMPLE_DATA / "coffee.jpg"), "-m", str(tiny_llava_dir), *args])
        assert result.exit_code == 2 and message in result.stderr
