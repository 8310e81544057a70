"""`vitkit attention`: parity of the maps and the rollout with computations written here from the
blocks' own weights, placement on the displayed image, overlays and masks, and the end-to-end paths."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from typer.testing import CliRunner

from tests.conftest import SAMPLE_DATA, SAMPLE_ERRORS, parse_jsonl, run_vitkit
from vitkit.cli import app

HEADS = 2


def _sharpen_attention(model: torch.nn.Module) -> None:
    """timm's init makes q.k tiny, so attention starts out uniform; wider q/k weights make every map differ."""
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.normal_(0, 0.4)


@pytest.fixture(scope="module")
def tiny_dino_reg_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DINOv2-with-registers layout (class token, 4 registers, 14 px patches, q/k LayerNorms), no
    classifier, 56 px input (a 4 x 4 grid), saved by timm's save_for_hf."""
    import timm
    from timm.models import save_for_hf

    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch14_reg4_dinov2", pretrained=False, depth=2, embed_dim=32,
                              num_heads=HEADS, img_size=56, num_classes=0, qk_norm=True)
    _sharpen_attention(model)
    with torch.no_grad():
        for norm in (model.blocks[-1].attn.q_norm, model.blocks[-1].attn.k_norm):  # not the identity LayerNorm
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_(0, 0.1)
        model.reg_token.normal_(0, 1.0)
    path = tmp_path_factory.mktemp("models") / "tiny-dino-reg"
    save_for_hf(model, str(path), safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def tiny_supervised_vit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-block ViT with a 5-class head and the DINO crop (Resize 73, CenterCrop 64: crop_pct 0.875)."""
    import timm
    from timm.models import save_for_hf

    torch.manual_seed(1)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=3, embed_dim=32, num_heads=4,
                              img_size=64, num_classes=5)
    _sharpen_attention(model)
    model.pretrained_cfg = {**model.pretrained_cfg, "crop_pct": 0.875}
    path = tmp_path_factory.mktemp("models") / "tiny-vit-supervised"
    save_for_hf(model, str(path), safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def tiny_resnet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import timm
    from timm.models import save_for_hf

    model = timm.create_model("test_resnet", pretrained=False, num_classes=3)
    path = tmp_path_factory.mktemp("models") / "tiny-resnet"
    save_for_hf(model, str(path), safe_serialization=True)
    return path


def _task(model_dir: Path, **options):
    import vitkit
    from vitkit.tasks.attention import AttentionOptions, AttentionTask

    return AttentionTask(vitkit.load_model(str(model_dir), task="attention"), AttentionOptions(**options))


def _maps(task, path: Path):
    from vitkit.inputs.data import Sample
    from vitkit.inputs.decode import decode_image

    image = decode_image(str(path)).image
    pixels = task.model.assets.transform(image)[None]
    with torch.inference_mode():
        [maps] = task.maps(task.forward(pixels), [Sample(0, str(path), image.width, image.height)])
    return maps, pixels


def _reference_last_block(model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """The class token's attention in the last block from its weights: (heads, tokens)."""
    with torch.no_grad():
        tokens = model.norm_pre(model._pos_embed(model.patch_embed(pixels)))
        for block in model.blocks[:-1]:
            tokens = block(tokens)
        last = model.blocks[-1]
        x = F.layer_norm(tokens, (tokens.shape[-1],), last.norm1.weight, last.norm1.bias, last.norm1.eps)
        qkv = x @ last.attn.qkv.weight.T + last.attn.qkv.bias  # (1, N, 3 * D)
        width = qkv.shape[-1] // 3
        head_dim = width // HEADS
        q = qkv[0, 0, :width].reshape(HEADS, head_dim)  # the class token's query
        k = qkv[0, :, width: 2 * width].reshape(-1, HEADS, head_dim).transpose(0, 1)  # (heads, N, hd)
        q_norm, k_norm = last.attn.q_norm, last.attn.k_norm
        q = F.layer_norm(q, (head_dim,), q_norm.weight, q_norm.bias, q_norm.eps)
        k = F.layer_norm(k, (head_dim,), k_norm.weight, k_norm.bias, k_norm.eps)
        return torch.softmax((k @ q[:, :, None])[:, :, 0] / math.sqrt(head_dim), dim=-1)


def test_last_block_maps_equal_the_weights_computation_without_registers(tiny_dino_reg_dir: Path) -> None:
    task = _task(tiny_dino_reg_dir)
    model = task.model.module
    assert model.num_reg_tokens == 4 and model.num_prefix_tokens == 5 and model.blocks[-1].attn.fused_attn
    maps, pixels = _maps(task, SAMPLE_DATA / "chelsea.jpg")
    reference = _reference_last_block(model, pixels)  # (heads, 1 + 4 + 16)
    assert maps.heads.shape == (HEADS, 4, 4)
    np.testing.assert_allclose(maps.heads.reshape(HEADS, -1), reference[:, 5:].numpy(), atol=1e-5)
    np.testing.assert_allclose(maps.shown, maps.heads.mean(axis=0), atol=1e-7)
    # the registers hold real attention that the map leaves out
    assert float(reference[:, 1:5].sum()) > 0.05
    assert not np.allclose(maps.heads[0], maps.heads[1], atol=1e-3)
    # the hooks only look: the model's output is the same with them, and they are gone afterwards
    from vitkit.models.backends.timm_attention import capture_attention

    with torch.no_grad():
        with capture_attention(task.vit, rollout=True) as captured:
            hooked = model.forward_features(pixels)
        assert captured.last is not None and captured.rollout is not None
        torch.testing.assert_close(hooked, model.forward_features(pixels), rtol=0, atol=0)
    assert all(not block.attn.qkv._forward_hooks for block in model.blocks)


def _reference_rollout(model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Abnar & Zuidema from each block's weights as timm's own unfused path computes them."""
    weights: list[torch.Tensor] = []
    hooks = [block.attn.attn_drop.register_forward_hook(lambda _m, _i, out: weights.append(out))
             for block in model.blocks]
    for block in model.blocks:
        block.attn.fused_attn = False
    try:
        with torch.no_grad():
            model.forward_features(pixels)
    finally:
        for block in model.blocks:
            block.attn.fused_attn = True
        for hook in hooks:
            hook.remove()
    joint = torch.eye(weights[0].shape[-1])
    for attention in weights:
        step = attention[0].mean(dim=0) + torch.eye(joint.shape[0])
        joint = (step / step.sum(dim=-1, keepdim=True)) @ joint
    return joint[0, model.num_prefix_tokens:]


def test_rollout_equals_a_reference_implementation(tiny_supervised_vit_dir: Path) -> None:
    task = _task(tiny_supervised_vit_dir, rollout=True)
    maps, pixels = _maps(task, SAMPLE_DATA / "rocket.jpg")
    reference = _reference_rollout(task.model.module, pixels)
    assert maps.shown.shape == (4, 4)
    np.testing.assert_allclose(maps.shown.ravel(), reference.numpy(), atol=1e-5)
    last_only, _ = _maps(_task(tiny_supervised_vit_dir), SAMPLE_DATA / "rocket.jpg")
    assert not np.allclose(last_only.shown, maps.shown, atol=1e-3)


def test_keep_mass_is_the_smallest_set_holding_that_share() -> None:
    from vitkit.tasks.attention import entropy, keep_mass_mask

    rng = np.random.default_rng(0)
    weights = rng.random((7, 9)) ** 3
    for mass in (0.1, 0.6, 0.95, 1.0):
        mask = keep_mass_mask(weights, mass)
        ranked = np.sort(weights.ravel())[::-1]
        fewest = int(np.argmax(np.cumsum(ranked) / ranked.sum() >= mass - 1e-12)) + 1
        assert mask.sum() == fewest
        assert weights[mask].min() >= weights[~mask].max(initial=0)
    uniform = np.full((4, 4), 1 / 21)  # registers took their share: the entropy is of the re-normalised map
    assert entropy(uniform) == pytest.approx(math.log(16))


@pytest.mark.parametrize("size", [(451, 300), (200, 640), (3000, 40)])
def test_the_region_is_what_the_transform_shows_the_model(tiny_supervised_vit_dir: Path, size) -> None:
    """The transform's input equals the original's region resized to the input size (up to resampling),
    for landscape, portrait and aspect-guarded (cropped first) images."""
    from vitkit.models.backends.timm_attention import seen_region

    transform = _task(tiny_supervised_vit_dir).model.assets.transform
    rng = np.random.default_rng(0)
    # smooth content, so different resampling filters agree
    small = rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
    x0, y0, x1, y1 = seen_region(transform, *size)
    assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
    box = (x0 * size[0], y0 * size[1], x1 * size[0], y1 * size[1])
    expected = image.resize((64, 64), Image.Resampling.BICUBIC, box=box)
    seen = transform(image)
    mean, std = torch.tensor([0.5, 0.5, 0.5]), torch.tensor([0.5, 0.5, 0.5])  # vit_tiny's
    got = (seen * std[:, None, None] + mean[:, None, None]).permute(1, 2, 0).numpy() * 255
    assert np.abs(got - np.asarray(expected, dtype=np.float64)).mean() < 2.0
    if x0 > 0.1:  # the check can tell a box moved to the image's edge from the right one
        shift = box[0]
        shifted = image.resize((64, 64), Image.Resampling.BICUBIC, box=(box[0] - shift, box[1], box[2] - shift, box[3]))
        assert np.abs(got - np.asarray(shifted, dtype=np.float64)).mean() > 2.0


def _inputs(tmp_path: Path) -> list[Path]:
    """A photo, a broken file, an EXIF-rotated JPEG (stored 200 x 120, displayed 120 x 200), a wide PNG."""
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(SAMPLE_DATA / "chelsea.jpg", folder / "chelsea.jpg")
    shutil.copy(SAMPLE_ERRORS / "truncated.jpg", folder / "truncated.jpg")
    displayed = Image.open(SAMPLE_DATA / "rocket.jpg").convert("RGB").resize((120, 200))
    exif = Image.Exif()
    exif[0x0112] = 6
    displayed.transpose(Image.Transpose.ROTATE_90).save(folder / "rotated.jpg", quality=95, exif=exif.tobytes())
    Image.open(SAMPLE_DATA / "coffee.jpg").convert("RGB").resize((300, 100)).save(folder / "wide.png")
    return [folder / name for name in ("chelsea.jpg", "truncated.jpg", "rotated.jpg", "wide.png")]


def _displayed(path: str) -> np.ndarray:
    return np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))


def test_cli_overlays_heads_and_masks_end_to_end(tiny_dino_reg_dir: Path, tmp_path: Path) -> None:
    inputs = _inputs(tmp_path)
    out = tmp_path / "out"
    result = run_vitkit("attention", *map(str, inputs), "--model", str(tiny_dino_reg_dir), "--out-dir", str(out),
                        "--heads", "--keep-mass", "0.6", "--format", "jsonl", "-b", "2")
    assert result.returncode == 1, result.stderr  # one input failed
    records = parse_jsonl(result.stdout)
    assert [r["path"] for r in records] == list(map(str, inputs))
    assert set(records[1]) == {"path", "error"}
    assert [(r["width"], r["height"]) for r in records if "error" not in r] == [(451, 300), (120, 200), (300, 100)]
    for record in (r for r in records if "error" not in r):
        assert list(record) == ["path", "width", "height", "output", "heads", "entropy", "mask_area", "mask_box"]
        assert 0 < record["entropy"] < math.log(16)
        original = _displayed(record["path"])
        overlay = np.asarray(Image.open(record["output"]).convert("RGB"))
        assert overlay.shape == original.shape
        x0, y0, x1, y1 = record["mask_box"]
        assert 0 <= x0 < x1 <= record["width"] and 0 <= y0 < y1 <= record["height"]
        changed = (overlay != original).any(axis=-1)
        outside = np.ones_like(changed)
        outside[y0:y1, x0:x1] = False
        assert not changed[outside].any()  # every pixel outside the mask is the original's
        assert 0.9 * record["mask_area"] <= changed.sum() <= record["mask_area"] < record["width"] * record["height"]
        scale = min(1.0, 256 / max(record["width"], record["height"]))
        panel = (round(record["width"] * scale), round(record["height"] * scale))
        assert Image.open(record["heads"]).size == (2 * panel[0] + 4, panel[1])  # one panel per head, in a row


def test_library_end_to_end_matches_the_maps(tiny_dino_reg_dir: Path, tmp_path: Path) -> None:
    import vitkit
    from vitkit.tasks.attention import entropy

    inputs = _inputs(tmp_path)
    out = tmp_path / "out"
    records = list(vitkit.attention([str(p) for p in inputs], model=str(tiny_dino_reg_dir), out_dir=str(out),
                                    alpha=1.0, draft=False, quiet=True))  # full decodes, as _maps
    assert [r.path for r in records] == list(map(str, inputs)) and "error" in records[1].to_dict()
    task = _task(tiny_dino_reg_dir)
    for record in (records[0], records[2], records[3]):
        maps, _ = _maps(task, Path(record.path))
        assert record.entropy == pytest.approx(entropy(maps.shown), abs=1e-5)
        assert record.heads is None and "mask_area" not in record.to_dict()
        overlay = np.asarray(Image.open(record.output).convert("RGB"))
        original = _displayed(record.path)
        assert overlay.shape == original.shape
        # the 56 px centre crop leaves the long side's ends as they were, and colours the rest
        x0, y0, x1, y1 = np.round(np.array(maps.region) * ([record.width, record.height] * 2)).astype(int)
        assert (x1 - x0, y1 - y0) != (record.width, record.height)  # every test image is cropped
        seen = np.zeros(original.shape[:2], dtype=bool)
        seen[y0:y1, x0:x1] = True
        changed = (overlay != original).any(axis=-1)
        assert not changed[~seen].any() and changed[seen].mean() > 0.9


def test_a_resnet_is_refused_cleanly(tiny_resnet_dir: Path) -> None:
    import vitkit
    from vitkit.errors import ModelTaskMismatchError

    with pytest.raises(ModelTaskMismatchError, match="not a vision transformer"):
        list(vitkit.attention(str(SAMPLE_DATA / "chelsea.jpg"), model=str(tiny_resnet_dir)))
    result = CliRunner().invoke(app, ["attention", str(SAMPLE_DATA / "chelsea.jpg"), "--model", str(tiny_resnet_dir)])
    assert result.exit_code == 2 and result.stdout == ""
    assert "not a vision transformer" in result.stderr and "dino-s16" in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("options, message", [({"heads": True}, "--out-dir"), ({"keep_mass": 1.5}, "--keep-mass"),
                                              ({"heads": True, "out_dir": "x", "rollout": True}, "--rollout")])
def test_option_errors(tiny_supervised_vit_dir: Path, options, message) -> None:
    import vitkit
    from vitkit.errors import UsageError

    with pytest.raises(UsageError, match=message):
        list(vitkit.attention(str(SAMPLE_DATA / "chelsea.jpg"), model=str(tiny_supervised_vit_dir), **options))


def test_thin_and_one_pixel_images(tiny_dino_reg_dir: Path, tmp_path: Path) -> None:
    import vitkit

    paths = []
    for size in ((1, 5000), (5000, 1), (1, 1)):
        paths.append(tmp_path / f"{size[0]}x{size[1]}.png")
        Image.new("RGB", size, (200, 40, 90)).save(paths[-1])
    records = list(vitkit.attention([str(p) for p in paths], model=str(tiny_dino_reg_dir), out_dir=str(tmp_path / "out"),
                                    keep_mass=0.6, quiet=True))
    for record, path in zip(records, paths):
        assert "error" not in record.to_dict()
        assert Image.open(record.output).size == Image.open(path).size == (record.width, record.height)
        assert 0 <= record.mask_area <= record.width * record.height and math.isfinite(record.entropy)
        if record.mask_area:
            x0, y0, x1, y1 = record.mask_box
            assert 0 <= x0 < x1 <= record.width and 0 <= y0 < y1 <= record.height
        else:
            assert record.mask_box is None


@pytest.mark.parametrize("name, message", [("eva02_tiny_patch14_224", "EvaAttention"),
                                           ("vit_medium_patch16_gap_256", "no class token")])
def test_vits_whose_attention_cannot_be_read_are_refused(name: str, message: str) -> None:
    import timm

    from vitkit.errors import ModelTaskMismatchError
    from vitkit.models.backends.timm_attention import vit_layout

    model = timm.create_model(name, pretrained=False, depth=1, embed_dim=32, num_heads=2)
    with pytest.raises(ModelTaskMismatchError, match=message):
        vit_layout(model, name)
    distilled = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, depth=1)
    assert vit_layout(distilled, "deit").num_prefix_tokens == 2  # class and distillation tokens
