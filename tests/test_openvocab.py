"""`vitkit detect --prompt` end to end: OWLv2 and Grounding DINO against their processors' own
post-processing on a 4:1 and an EXIF-rotated image; negatives, synonyms, COCO export, broken files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageOps
from typer.testing import CliRunner

import vitkit
from tests.conftest import SAMPLE_DATA, parse_jsonl, run_vitkit
from tests.test_sam import tiny_sam_dir  # noqa: F401  (the tiny SAM fixture, for --masks)
from tests.test_segment import _byte_level_vocab
from vitkit.cli import app

runner = CliRunner()
GROUNDING_WORDS = "[PAD] [UNK] [CLS] [SEP] [MASK] . a cat dog red car person toy kitten".split()


def detect(*args: str) -> tuple[int, list[dict], str]:
    result = runner.invoke(app, ["detect", *args])
    return result.exit_code, parse_jsonl(result.stdout), result.stderr


@pytest.fixture(scope="module")
def tiny_owlv2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import CLIPTokenizer, Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    torch.manual_seed(0)
    vocab = _byte_level_vocab()
    text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=16, bos_token_id=len(vocab) - 2,
                eos_token_id=len(vocab) - 1, pad_token_id=len(vocab) - 1)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=64,
                  patch_size=16)
    path = tmp_path_factory.mktemp("models") / "tiny-owlv2"
    model = Owlv2ForObjectDetection(Owlv2Config(text_config=text, vision_config=vision, projection_dim=32))
    with torch.no_grad():
        # Random heads saturate every score at 0 or 1; a fixed logit scale of 3 spreads them so thresholds bite.
        model.class_head.logit_scale.weight.zero_()
        model.class_head.logit_scale.bias.fill_(2.0)
        model.class_head.logit_shift.weight.normal_(0, 0.02)
        # ... and its box head, large boxes that overlap, as a trained one's neighbouring patches do.
        for layer in (model.box_head.dense0, model.box_head.dense1):
            layer.weight.normal_(0, 0.2)
        model.box_head.dense2.weight.normal_(0, 1.0)
        model.box_head.dense2.bias.copy_(torch.tensor([0.0, 0.0, 1.5, 1.5]))
    model.save_pretrained(path)
    Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 64, "width": 64}),
                   tokenizer=CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_grounding_dino_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import (BertTokenizer, GroundingDinoConfig, GroundingDinoForObjectDetection,
                              GroundingDinoImageProcessor, GroundingDinoProcessor)

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "tiny-grounding-dino"
    path.mkdir(exist_ok=True)
    (path / "words.txt").write_text("\n".join(GROUNDING_WORDS) + "\n")
    backbone = dict(model_type="swin", embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=4,
                    image_size=64, out_indices=[2, 3, 4])
    text = dict(model_type="bert", vocab_size=len(GROUNDING_WORDS), hidden_size=32, num_hidden_layers=1,
                num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    config = GroundingDinoConfig(backbone_config=backbone, text_config=text, d_model=32, encoder_layers=1,
                                 decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2,
                                 decoder_attention_heads=2, num_queries=20, max_text_len=32, encoder_n_points=1,
                                 decoder_n_points=1)
    GroundingDinoForObjectDetection(config).save_pretrained(path)
    # Its feature pyramid needs a few pixels per level: 96 px on the short side.
    GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(size={"shortest_edge": 96, "longest_edge": 160}),
                           tokenizer=BertTokenizer(str(path / "words.txt"))).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 4:1 PNG and an EXIF-rotated (orientation 6) JPEG displayed 120 x 200."""
    folder = tmp_path_factory.mktemp("odd")
    photo = Image.open(SAMPLE_DATA / "rocket.jpg").convert("RGB")
    photo.resize((400, 100)).save(folder / "wide.png")
    stored = photo.resize((120, 200)).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(folder / "rotated.jpg", quality=95, exif=exif.tobytes())
    return folder / "wide.png", folder / "rotated.jpg"


def upright(path: Path) -> Image.Image:
    return ImageOps.exif_transpose(Image.open(path)).convert("RGB")


def owl_reference(model_dir: Path, path: Path, names: list[str], threshold: float) -> list[tuple[int, float, list]]:
    """transformers alone: boxes by the processor's own convention ((h, w) target sizes; it undoes its square)."""
    from transformers import Owlv2ForObjectDetection, Owlv2Processor

    model, processor = Owlv2ForObjectDetection.from_pretrained(model_dir).eval(), Owlv2Processor.from_pretrained(model_dir)
    image = upright(path)
    with torch.no_grad():
        outputs = model(**processor(text=[names], images=image, return_tensors="pt"))
    [result] = processor.post_process_grounded_object_detection(outputs, threshold=threshold,
                                                                target_sizes=[(image.height, image.width)])
    return [(label, score, clip(box, image.width, image.height)) for score, label, box in
            zip(result["scores"].tolist(), result["labels"].tolist(), result["boxes"].tolist())]


def grounding_reference(model_dir: Path, path: Path, names: list[str], threshold: float) -> list[tuple[float, list]]:
    from transformers import GroundingDinoForObjectDetection, GroundingDinoProcessor

    model = GroundingDinoForObjectDetection.from_pretrained(model_dir).eval()
    processor = GroundingDinoProcessor.from_pretrained(model_dir)
    image = upright(path)
    with torch.no_grad():
        inputs = processor(images=image, text=names, return_tensors="pt")  # the processor joins "a. b."
        outputs = model(**inputs)
    [result] = processor.post_process_grounded_object_detection(
        outputs, inputs["input_ids"], threshold=threshold, text_threshold=0.25,
        target_sizes=[(image.height, image.width)])
    # vitkit keeps the boxes whose label (the tokens above text_threshold) holds a word of a prompt.
    words = {word for name in names for word in name.split()}
    return [(score, clip(box, image.width, image.height)) for score, box, label in
            zip(result["scores"].tolist(), result["boxes"].tolist(), result["text_labels"]) if words & set(label.replace(".", " ").split())]


def clip(box: list[float], width: int, height: int) -> list[float]:
    x0, y0, x1, y1 = box
    return [min(max(x0, 0), width), min(max(y0, 0), height), min(max(x1, 0), width), min(max(y1, 0), height)]


def assert_same(got: list[tuple[float, list]], expected: list[tuple[float, list]]) -> None:
    assert len(got) == len(expected)
    remaining = list(expected)
    for score, box in got:
        match = next(i for i, (s, b) in enumerate(remaining) if abs(s - score) <= 1e-5
                     and max(abs(u - v) for u, v in zip(b, box)) <= 1e-3)
        remaining.pop(match)


def test_owlv2_equals_its_processor_on_a_wide_and_a_rotated_image(tiny_owlv2_dir: Path,
                                                                   odd_images: tuple[Path, Path]) -> None:
    names = ["cat", "dog"]
    code, records, _ = detect(*map(str, odd_images), "--model", str(tiny_owlv2_dir), *sum((["--prompt", n] for n in names), []),
                              "--threshold", "0.5", "-b", "2", "--no-draft")
    assert code == 0
    total = 0
    for path, record in zip(odd_images, records):
        expected = owl_reference(tiny_owlv2_dir, path, names, 0.5)
        assert_same([(d["score"], d["box"]) for d in record["detections"]], [(s, b) for _, s, b in expected])
        labels = {(round(s, 5), names[n]) for n, s, _ in expected}
        assert {(round(d["score"], 5), d["label"]) for d in record["detections"]} == labels
        assert all(d["class_id"] == names.index(d["label"]) for d in record["detections"])
        total += len(expected)
    assert (records[0]["width"], records[0]["height"], records[1]["width"], records[1]["height"]) == (400, 100, 120, 200)
    assert total > 0


@pytest.mark.parametrize("version", ["owlv2", "owlvit"])
def test_owl_boxes_are_fractions_of_the_processors_square(version: str, tiny_owlv2_dir: Path) -> None:
    """OWLv2 pads a 4:1 image to a square: a box over that square's top quarter is the whole image.
    OWL-ViT stretches it instead: a box over its whole input is the whole image."""
    from types import SimpleNamespace

    from transformers import CLIPTokenizer, OwlViTImageProcessor, OwlViTProcessor, Owlv2Processor
    from vitkit.models.backends.hf_openvocab import OWL, OpenVocabularyFamily

    if version == "owlv2":
        processor, box = Owlv2Processor.from_pretrained(tiny_owlv2_dir), [0.5, 0.125, 1.0, 0.25]
    else:
        processor = OwlViTProcessor(image_processor=OwlViTImageProcessor(),
                                    tokenizer=CLIPTokenizer.from_pretrained(tiny_owlv2_dir))
        box = [0.5, 0.5, 1.0, 1.0]
    family = OpenVocabularyFamily(OWL, processor, ["cat"], 0.1)
    outputs = SimpleNamespace(logits=torch.tensor([[[5.0]]]), pred_boxes=torch.tensor([[box]]))
    [[candidate]] = family.candidates(outputs, [(100, 400)])
    assert candidate.box == pytest.approx((0.0, 0.0, 400.0, 100.0))


def test_grounding_dino_equals_its_processor_on_a_wide_and_a_rotated_image(tiny_grounding_dino_dir: Path,
                                                                             odd_images: tuple[Path, Path]) -> None:
    names = ["cat", "red car"]
    total = 0
    for path in odd_images:
        code, [record], _ = detect(str(path), "--model", str(tiny_grounding_dino_dir), "--prompt", "cat",
                                   "--prompt", "red car", "--no-draft")
        assert code == 0
        expected = grounding_reference(tiny_grounding_dino_dir, path, names, 0.3)  # its default box threshold
        assert_same([(d["score"], d["box"]) for d in record["detections"]], expected)
        assert all(d["label"] == names[d["class_id"]] for d in record["detections"])
        total += len(expected)
    assert total > 0


def test_grounding_dino_boxes_do_not_depend_on_the_batch(tiny_grounding_dino_dir: Path,
                                                        odd_images: tuple[Path, Path]) -> None:
    """Its Swin backbone would see a padded batch's padding: a wide and a tall image together must each
    get their single-image boxes."""
    args = ("--model", str(tiny_grounding_dino_dir), "--prompt", "cat", "--prompt", "red car", "--no-draft",
            "--threshold", "0.0")
    _, together, _ = detect(*map(str, odd_images), *args, "-b", "2")
    alone = [detect(str(path), *args, "-b", "1")[1][0] for path in odd_images]
    assert all(record["detections"] for record in together)
    for batched, single in zip(together, alone):
        assert_same([(d["score"], d["box"]) for d in batched["detections"]],
                    [(d["score"], d["box"]) for d in single["detections"]])


def test_prompts_longer_than_the_text_tower_are_refused(tiny_owlv2_dir: Path) -> None:
    code, _, stderr = detect(str(SAMPLE_DATA / "chelsea.jpg"), "--model", str(tiny_owlv2_dir),
                             "--prompt", " ".join(["a very long description of a red car"] * 4))
    assert code == 2 and "tokens; this model reads at most 16" in stderr


def test_negatives_suppress_overlapping_boxes_and_never_appear(tiny_owlv2_dir: Path) -> None:
    from torchvision.ops import box_iou

    path = SAMPLE_DATA / "chelsea.jpg"
    code, [record], _ = detect(str(path), "--model", str(tiny_owlv2_dir), "--prompt", "cat", "--negative", "dog",
                               "--threshold", "0.3", "--no-draft")
    assert code == 0
    found = owl_reference(tiny_owlv2_dir, path, ["cat", "dog"], 0.3)
    cats = [(s, b) for n, s, b in found if n == 0]
    dogs = torch.tensor([b for n, _, b in found if n == 1])
    assert len(dogs)  # the check has negatives to apply
    kept = [(s, b) for s, b in cats if not (box_iou(torch.tensor([b]), dogs) >= 0.5).any()]
    assert len(kept) < len(cats)  # ... and they remove something
    assert_same([(d["score"], d["box"]) for d in record["detections"]], kept)
    assert {d["label"] for d in record["detections"]} <= {"cat"}


def test_synonyms_are_one_label_with_one_box_per_object(tiny_owlv2_dir: Path) -> None:
    from torchvision.ops import nms

    path = SAMPLE_DATA / "chelsea.jpg"
    records = list(vitkit.detect(str(path), model=str(tiny_owlv2_dir), prompt=["cat|kitten", "dog"], threshold=0.3,
                                 draft=False))
    found = owl_reference(tiny_owlv2_dir, path, ["cat", "kitten", "dog"], 0.3)
    cats = [(s, b) for n, s, b in found if n in (0, 1)]
    assert {n for n, _, _ in found if n in (0, 1)} == {0, 1}  # both names found boxes
    keep = nms(torch.tensor([b for _, b in cats]), torch.tensor([s for s, _ in cats]), 0.5).tolist()
    assert len(keep) < len(cats)
    got = [d for d in records[0].fields["detections"] if d["label"] == "cat"]
    assert all(d["class_id"] == 0 for d in got)
    assert_same([(d["score"], d["box"]) for d in got], [cats[i] for i in keep])
    assert {d["label"] for d in records[0].fields["detections"]} <= {"cat", "dog"}


def test_cli_broken_files_keep_slots_coco_has_the_prompts(tiny_owlv2_dir: Path, photos: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("dog\n\nred car|automobile\n")
    coco, out = tmp_path / "found.json", tmp_path / "annotated"
    result = run_vitkit("detect", str(photos), "--model", str(tiny_owlv2_dir), "--prompt", "cat", "--prompts-file",
                        str(prompts), "--coco", str(coco), "--out-dir", str(out), "--max-detections", "3",
                        "--threshold", "0.0")
    records = parse_jsonl(result.stdout)
    assert result.returncode == 1 and [("error" in r) for r in records].count(True) == 3
    assert [r["path"] for r in records] == sorted(r["path"] for r in records)  # input order, errors in place
    document = json.loads(coco.read_text())
    assert document["categories"] == [{"id": 0, "name": "cat"}, {"id": 1, "name": "dog"}, {"id": 2, "name": "red car"}]
    good = [r for r in records if "error" not in r]
    assert len(document["annotations"]) == sum(len(r["detections"]) for r in good) == 3 * len(good)
    assert all(Path(r["output"]).is_relative_to(out) and Path(r["output"]).is_file() for r in good)


def test_usage_errors_name_the_fix(tiny_owlv2_dir: Path, tiny_detr_dir: Path) -> None:
    code, _, stderr = detect(str(SAMPLE_DATA), "--model", str(tiny_owlv2_dir))
    assert code == 2 and "--prompt" in stderr
    code, _, stderr = detect(str(SAMPLE_DATA), "--model", str(tiny_detr_dir), "--prompt", "cat")
    assert code == 2 and "--classes" in stderr
    code, _, stderr = detect(str(SAMPLE_DATA), "--model", str(tiny_owlv2_dir), "--prompt", "cat", "--classes", "cat")
    assert code == 2 and "--prompt" in stderr
    code, _, stderr = detect(str(SAMPLE_DATA), "--model", str(tiny_owlv2_dir), "--prompt", "cat", "--prompt", "cat")
    assert code == 2 and "twice" in stderr


def test_resolve_negatives_and_synonyms_on_known_boxes() -> None:
    from vitkit.models.backends.hf_openvocab import Candidate, parse_prompts, resolve

    prompts = parse_prompts(["car|automobile", "person"], ["toy car"])  # names: car, automobile, person, toy car
    assert prompts.labels == ("car", "person") and prompts.owner == (0, 0, 1, -1)
    candidates = [Candidate(0, 0.9, (0, 0, 10, 10)), Candidate(1, 0.8, (1, 0, 11, 10)),  # one car, two names
                  Candidate(1, 0.7, (50, 50, 60, 60)),  # another car, found by its synonym only
                  Candidate(2, 0.6, (0, 0, 10, 10)),  # a person where the car is: another prompt, kept
                  Candidate(0, 0.95, (100, 100, 110, 110)), Candidate(3, 0.5, (101, 100, 111, 110)),  # a toy car
                  Candidate(2, 0.4, (100, 100, 110, 110))]  # a person on the toy car is suppressed too
    kept = [(prompt, c.score) for prompt, c in resolve(candidates, prompts)]
    assert kept == [(0, 0.9), (0, 0.7), (1, 0.6)]


def test_eval_detect_prompts_with_the_ground_truths_category_names(tiny_owlv2_dir: Path, tmp_path: Path) -> None:
    from tests.test_eval_cli import write_ground_truth
    from vitkit.evaluation.metrics import Detection, evaluate_detections, load_coco_ground_truth

    photos = [str(SAMPLE_DATA / n) for n in ("chelsea.jpg", "rocket.jpg")]
    code, records, _ = detect(*photos, "--model", str(tiny_owlv2_dir), "--prompt", "cat", "--prompt", "dog",
                              "--threshold", "0.001", "--max-detections", "100")
    assert code == 0 and sum(len(r["detections"]) for r in records) > 0
    gt = tmp_path / "gt.json"
    write_ground_truth(records, gt, ["cat", "dog"])  # category ids 1, 2: matched to the prompts by name
    result = runner.invoke(app, ["eval", "detect", str(SAMPLE_DATA), "--coco-gt", str(gt),
                                 "--model", str(tiny_owlv2_dir), "--format", "json"])
    assert result.exit_code == 0, result.stderr
    [row] = json.loads(result.stdout)
    # Prompted boxes overlap one another, so matching them to themselves is not all perfect: the
    # reference is the library's metric on the same detections, with the categories matched by name.
    ground_truth = load_coco_ground_truth(gt)
    expected = evaluate_detections(ground_truth, [Detection(i, d["class_id"] + 1, d["score"], tuple(d["box"]))
                                                  for i, r in enumerate(records, 1) for d in r["detections"]])
    assert row["ap"] == pytest.approx(expected.ap) and row["ap"] > 0.5 and row["images"] == 2


def test_masks_segment_the_prompted_boxes(tiny_owlv2_dir: Path, tiny_sam_dir: Path) -> None:
    args = [str(SAMPLE_DATA / "chelsea.jpg"), "--model", str(tiny_owlv2_dir), "--prompt", "cat", "--prompt", "dog",
            "--max-detections", "3", "--no-draft"]
    _, [plain], _ = detect(*args)
    code, [masked], _ = detect(*args, "--masks", "--mask-model", str(tiny_sam_dir))
    assert code == 0 and len(masked["detections"]) == 3
    assert [{k: d[k] for k in ("label", "score", "box")} for d in masked["detections"]] == \
        [{k: d[k] for k in ("label", "score", "box")} for d in plain["detections"]]
    assert all(d["mask"]["size"] == [300, 451] for d in masked["detections"])


def test_owl_text_embeddings_are_computed_once_per_run(tiny_owlv2_dir: Path) -> None:
    loaded = vitkit.load_model(str(tiny_owlv2_dir), task="detect", device="cpu")
    calls = []
    hook = loaded.module.owlv2.text_model.register_forward_hook(lambda *args: calls.append(1))
    try:
        records = list(vitkit.detect([str(SAMPLE_DATA / n) for n in ("chelsea.jpg", "coffee.jpg", "rocket.jpg")],
                                     model=loaded, prompt=["cat", "dog"], batch_size=1))
    finally:
        hook.remove()
    assert len(records) == 3 and all(r.ok for r in records)
    assert len(calls) == 1  # three batches, one text pass
