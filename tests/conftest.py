"""Hermetic test set-up: temp Hugging Face cache, offline hub, tiny random models saved in each library's own format."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DATA = REPO_ROOT / "sample_data"
GOOD_SAMPLES = sorted(p.name for p in SAMPLE_DATA.glob("*.jpg"))
# Deliberately bad files live beside sample_data/, not in it, so the README's first command runs clean.
SAMPLE_ERRORS = REPO_ROOT / "sample_errors"
BROKEN_SAMPLES = sorted(p.name for p in SAMPLE_ERRORS.glob("*.jpg"))


def copy_mixed_samples(target: Path) -> Path:
    """sample_data's photos with the broken samples in a `broken/` subfolder: one folder of good and bad files."""
    shutil.copytree(SAMPLE_DATA, target)
    shutil.copytree(SAMPLE_ERRORS, target / "broken", ignore=shutil.ignore_patterns("*.md"))
    return target


@pytest.fixture(autouse=True, scope="session")
def hermetic_environment(tmp_path_factory: pytest.TempPathFactory) -> None:
    home = tmp_path_factory.mktemp("hf_home")
    os.environ["HF_HOME"] = str(home)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["VITKIT_HOME"] = str(tmp_path_factory.mktemp("vitkit_home"))
    os.environ.pop("VITKIT_DEBUG", None)
    import torch

    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_timm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-block ViT with a 1000-class head, saved by timm's own save_for_hf (config.json + model.safetensors)."""
    import timm
    import torch
    from timm.models import save_for_hf

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=1000,
                              depth=2, embed_dim=64, num_heads=2)
    with torch.no_grad():
        # Random heads give near-uniform probabilities; a wider head makes top-k order meaningful.
        model.head.weight.normal_(0, 0.5)
    path = tmp_path_factory.mktemp("models") / "tiny-vit"
    save_for_hf(model, str(path), safe_serialization=True)
    return path


@pytest.fixture(scope="session")
def tiny_timm_labelled_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-class custom checkpoint that brings its own label names in config.json."""
    import timm
    import torch
    from timm.models import save_for_hf

    torch.manual_seed(1)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3,
                              depth=1, embed_dim=32, num_heads=2, img_size=64)
    path = tmp_path_factory.mktemp("models") / "tiny-vit-labelled"
    save_for_hf(model, str(path), model_config={"label_names": ["cat", "dog", "rocket"]}, safe_serialization=True)
    return path


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """A copy of the photos with the broken samples in `broken/` that tests may change freely."""
    return copy_mixed_samples(tmp_path / "photos")


@pytest.fixture(scope="session")
def mixed_samples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same mixed folder, shared read-only by the tests that only scan it."""
    return copy_mixed_samples(tmp_path_factory.mktemp("mixed") / "samples")


def assert_records_in_slots(records: list[dict], root: Path, ok_keys: set[str]) -> list[dict]:
    """Records of a run over a copy of the mixed samples: one per input in path order, each broken file a
    `{path, error}` record in its own slot, every other exactly `ok_keys`. Returns the ok records."""
    expected_order = sorted([*GOOD_SAMPLES, *(f"broken/{n}" for n in BROKEN_SAMPLES)])
    assert [os.path.relpath(r["path"], root) for r in records] == expected_order
    ok = []
    for record in records:
        if "broken" in record["path"]:
            assert set(record) == {"path", "error"}
        else:
            assert set(record) == ok_keys
            ok.append(record)
    return ok


def parse_jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def run_vitkit(*args: str, input: str | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The installed command line in a real subprocess (stdout a pipe, no terminal)."""
    return subprocess.run([sys.executable, "-m", "vitkit", *args], capture_output=True, text=True,
                          input=input, cwd=cwd, env=os.environ.copy(), timeout=300)


TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="session")
def tiny_open_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CLIP in open_clip's local-dir layout: open_clip_config.json + open_clip_model.safetensors."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_CLIP_CONFIG)
    path = tmp_path_factory.mktemp("models") / "tiny-clip"
    path.mkdir()
    config = {"model_cfg": TINY_CLIP_CONFIG,
              "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}}
    (path / "open_clip_config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "open_clip_model.safetensors"))
    return path


@pytest.fixture(scope="session")
def tiny_transformers_mae_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ViTMAE (with decoder) and its image processor, saved with save_pretrained."""
    import torch
    from transformers import ViTImageProcessor, ViTMAEConfig, ViTMAEForPreTraining

    torch.manual_seed(0)
    config = ViTMAEConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                          image_size=32, patch_size=16, decoder_hidden_size=32, decoder_num_hidden_layers=1,
                          decoder_num_attention_heads=2, decoder_intermediate_size=64)
    path = tmp_path_factory.mktemp("models") / "tiny-mae"
    ViTMAEForPreTraining(config).save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_detr_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny DETR with a timm ResNet-18 backbone (random, nothing downloaded) and its image processor."""
    import torch
    from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor

    torch.manual_seed(0)
    labels = {0: "cat", 1: "dog", 2: "rocket"}
    config = DetrConfig(use_timm_backbone=True, backbone="resnet18", use_pretrained_backbone=False, d_model=32,
                        encoder_layers=1, decoder_layers=1, encoder_ffn_dim=64, decoder_ffn_dim=64,
                        encoder_attention_heads=2, decoder_attention_heads=2, num_queries=10, num_labels=3,
                        id2label=labels, label2id={v: k for k, v in labels.items()})
    model = DetrForObjectDetection(config)
    with torch.no_grad():
        # Spread the random queries' boxes and scores so images differ and thresholds bite.
        model.bbox_predictor.layers[-1].weight.normal_(0, 0.5)
        model.class_labels_classifier.weight.normal_(0, 0.5)
    path = tmp_path_factory.mktemp("models") / "tiny-detr"
    model.save_pretrained(path)
    DetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(path)
    return path


TINY_COCA_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16,
                   "attentional_pool": True, "attn_pooler_heads": 2, "attn_pooler_queries": 8, "output_tokens": True},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1,
                 "embed_cls": True, "output_tokens": True},
    "multimodal_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1,
                       "attn_pooler_heads": 2},
    "custom_text": True,  # with multimodal_cfg, makes open_clip build a CoCa
}


@pytest.fixture(scope="session")
def tiny_coca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CoCa captioner in open_clip's local-dir layout (open_clip_config.json + open_clip_model.safetensors)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.CoCa(**{k: v for k, v in TINY_COCA_CONFIG.items() if k != "custom_text"})
    with torch.no_grad():
        # open_clip leaves the decoder's vocabulary projection uninitialised (all logits 0 here); random
        # values give distinct tokens, and a larger end-of-text column makes some captions stop early.
        projection = model.text_decoder.text_projection
        projection.normal_(0, 1.0)
        projection[:, open_clip.get_tokenizer("ViT-B-32").eot_token_id] *= 8
    path = tmp_path_factory.mktemp("models") / "tiny-coca"
    path.mkdir()
    (path / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_COCA_CONFIG}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "open_clip_model.safetensors"))
    return path


@pytest.fixture(scope="session")
def tiny_transformers_mae_normpix_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ViTMAE with norm_pix_loss=True (as the official MAE checkpoints), 64 px with 8 px patches
    (an 8 x 8 grid), and ImageNet mean/std in its processor."""
    import torch
    from transformers import ViTImageProcessor, ViTMAEConfig, ViTMAEForPreTraining

    torch.manual_seed(0)
    config = ViTMAEConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                          image_size=64, patch_size=8, decoder_hidden_size=32, decoder_num_hidden_layers=1,
                          decoder_num_attention_heads=2, decoder_intermediate_size=64, norm_pix_loss=True)
    path = tmp_path_factory.mktemp("models") / "tiny-mae-normpix"
    ViTMAEForPreTraining(config).save_pretrained(path)
    ViTImageProcessor(size={"height": 64, "width": 64}, image_mean=[0.485, 0.456, 0.406],
                      image_std=[0.229, 0.224, 0.225]).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_transformers_classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ViTForImageClassification with 10 named classes and its ViTImageProcessor, saved with save_pretrained."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    labels = {i: name for i, name in enumerate(("cat", "dog", "rocket", "coffee", "camera", "astronaut", "galaxy",
                                                 "tree", "car", "boat"))}
    config = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       image_size=64, patch_size=16, num_labels=len(labels), id2label=labels,
                       label2id={v: k for k, v in labels.items()})
    model = ViTForImageClassification(config)
    with torch.no_grad():
        # A wider head than the default init, so top-k order and scores differ between images.
        model.classifier.weight.normal_(0, 2.0)
    path = tmp_path_factory.mktemp("models") / "tiny-vit-hf-classifier"
    model.save_pretrained(path)
    ViTImageProcessor(size={"height": 64, "width": 64}).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny LLaVA (CLIP vision tower + Llama) with its processor and chat template (tests/tiny_vlm.py)."""
    from tests.tiny_vlm import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("models") / "tiny-llava")


@pytest.fixture(scope="session")
def tiny_idefics3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Idefics3, SmolVLM's architecture, with SmolVLM's chat template (tests/tiny_vlm.py)."""
    from tests.tiny_vlm import build_tiny_idefics3

    return build_tiny_idefics3(tmp_path_factory.mktemp("models") / "tiny-idefics3")


@pytest.fixture(scope="session")
def tiny_florence2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Florence-2 (DaViT + BART) with its task-token processor and no chat template (tests/tiny_vlm.py)."""
    from tests.tiny_vlm import build_tiny_florence2

    return build_tiny_florence2(tmp_path_factory.mktemp("models") / "tiny-florence2")


@pytest.fixture(scope="session")
def tiny_qwen2vl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen2-VL: flattened patches for the whole batch in one tensor (tests/tiny_vlm.py)."""
    from tests.tiny_vlm import build_tiny_qwen2vl

    return build_tiny_qwen2vl(tmp_path_factory.mktemp("models") / "tiny-qwen2vl")


@pytest.fixture(scope="session")
def vlm_photos(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Photos of different shapes for vision-language models: a wide PNG (fewer Idefics3 tiles, a shorter
    prompt, so a batch is padded) and an EXIF-rotated PNG among them."""
    from PIL import Image

    from tests.corpus import oriented_png

    folder = tmp_path_factory.mktemp("vlm-photos")
    wide = folder / "wide.png"
    Image.open(SAMPLE_DATA / "rocket.jpg").convert("RGB").resize((300, 60)).save(wide)
    rotated = oriented_png(folder, 6, Image.open(SAMPLE_DATA / "chelsea.jpg").convert("RGB").resize((90, 60)))
    return [str(SAMPLE_DATA / "astronaut.jpg"), str(wide), str(SAMPLE_DATA / "coffee.jpg"), str(rotated),
            str(SAMPLE_DATA / "hubble_deep_field.jpg")]


def displayed(path: str) -> Image.Image:
    """An image as displayed (EXIF orientation applied), RGB: what a model is shown, by PIL alone."""
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        return ImageOps.exif_transpose(image).convert("RGB")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a busy machine waiting threads slow them down ten-fold.
    vitkit's once-per-process thread setup runs first: otherwise a module's first model load would set
    every core again."""
    import torch

    from vitkit.models.acceleration import configure_threads

    configure_threads()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
