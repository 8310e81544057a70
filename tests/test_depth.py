"""`vitkit depth` end to end: parity with the processor's own post_process_depth_estimation, EXIF,
mixed-size batches, the 16-bit PNG's scale and offset, broken files, and kind/unit from the config."""

from __future__ import annotations

import functools
import hashlib
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from typer.testing import CliRunner

import vitkit
from tests.conftest import BROKEN_SAMPLES, GOOD_SAMPLES, SAMPLE_DATA, parse_jsonl, run_vitkit
from vitkit.cli import app
from vitkit.errors import UsageError
from vitkit.models.backends.hf_depth import read_depth_kind
from vitkit.outputs import depth_maps

runner = CliRunner()
RECORD_KEYS = ["path", "width", "height", "depth", "preview", "kind", "unit", "min", "max", "scale", "offset"]


def depth(*args: str) -> tuple[int, list[dict], str]:
    result = runner.invoke(app, ["depth", *args])
    return result.exit_code, parse_jsonl(result.stdout), result.stderr


def upright(path: Path) -> Image.Image:
    return ImageOps.exif_transpose(Image.open(path)).convert("RGB")


# --- tiny random models, each saved with its own image processor by save_pretrained -----------------

def _save_depth_anything(path: Path, kind: str) -> Path:
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config, DPTImageProcessor

    torch.manual_seed(0)
    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2, patch_size=14,
                            image_size=28, out_features=["stage1", "stage2", "stage3", "stage4"],
                            reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, neck_hidden_sizes=[8, 16, 32, 32], reassemble_hidden_size=32,
                                 fusion_hidden_size=16, head_hidden_size=8, patch_size=14, depth_estimation_type=kind,
                                 max_depth=20)
    model = DepthAnythingForDepthEstimation(config)
    with torch.no_grad():  # random heads end in a ReLU that zeroes almost everything; lift them into range
        for name, param in model.head.named_parameters():
            param.normal_(0, 0.5) if name.endswith("weight") else param.fill_(0.5)
    model.save_pretrained(path)
    # Depth Anything's own processor settings, at a tiny size: aspect kept, sides multiples of the patch.
    DPTImageProcessor(size={"height": 56, "width": 56}, keep_aspect_ratio=True, ensure_multiple_of=14,
                      resample=Image.Resampling.BICUBIC, image_mean=[0.485, 0.456, 0.406],
                      image_std=[0.229, 0.224, 0.225]).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_depth_anything_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_depth_anything(tmp_path_factory.mktemp("models") / "tiny-depth-anything", "relative")


@pytest.fixture(scope="module")
def tiny_metric_depth_anything_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_depth_anything(tmp_path_factory.mktemp("models") / "tiny-depth-anything-metric", "metric")


@pytest.fixture(scope="module")
def tiny_dpt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    torch.manual_seed(0)
    config = DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, image_size=32,
                       patch_size=16, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 16, 32, 32],
                       fusion_hidden_size=16, head_hidden_size=8)
    model = DPTForDepthEstimation(config)
    with torch.no_grad():
        for name, param in model.head.named_parameters():
            param.normal_(0, 0.5) if name.endswith("weight") else param.fill_(0.5)
    path = tmp_path_factory.mktemp("models") / "tiny-dpt"
    model.save_pretrained(path)
    # DPT-Large's processor: a fixed square, aspect not kept.
    DPTImageProcessor(size={"height": 48, "width": 48}, keep_aspect_ratio=False, ensure_multiple_of=16).save_pretrained(path)
    return path


@functools.cache
def load_reference(model_dir: Path) -> tuple[object, torch.nn.Module]:
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    return AutoImageProcessor.from_pretrained(model_dir), AutoModelForDepthEstimation.from_pretrained(model_dir).eval()


def reference(model_dir: Path, path: Path) -> np.ndarray:
    """transformers alone: the processor on the upright image, the model, the processor's post-processing."""
    processor, model = load_reference(model_dir)
    image = upright(path)
    with torch.inference_mode():
        outputs = model(**processor(images=image, return_tensors="pt"))
    [result] = processor.post_process_depth_estimation(outputs, target_sizes=[(image.height, image.width)])
    return result["predicted_depth"].numpy()


def read_levels(path: str) -> np.ndarray:
    image = Image.open(path)
    assert image.mode in ("I;16", "I")  # 16-bit greyscale
    return np.array(image).astype(np.int64)


def non_square(tmp_path: Path) -> Path:
    path = tmp_path / "wide.png"
    Image.open(SAMPLE_DATA / "rocket.jpg").convert("RGB").resize((240, 80)).save(path)
    return path


# --- parity ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("model_fixture", ["tiny_depth_anything_dir", "tiny_dpt_dir"])
def test_maps_equal_the_processors_post_processing(model_fixture: str, request: pytest.FixtureRequest,
                                                   tmp_path: Path) -> None:
    model_dir = request.getfixturevalue(model_fixture)
    paths = [SAMPLE_DATA / name for name in GOOD_SAMPLES[:3]] + [non_square(tmp_path)]
    code, records, stderr = depth(*map(str, paths), "--model", str(model_dir), "--out-dir", str(tmp_path / "out"),
                                  "--npy", "--no-draft", "-b", "1")
    assert code == 0, stderr
    for record, path in zip(records, paths, strict=True):
        expected = reference(model_dir, path)
        assert list(record) == RECORD_KEYS + ["npy"]
        assert expected.shape == (record["height"], record["width"]) == upright(path).size[::-1]
        assert expected.std() > 1e-3 * abs(expected).max()  # a map with structure, not a constant
        stored = np.load(record["npy"])
        assert stored.dtype == np.float32 and np.array_equal(stored, expected)
        assert (record["min"], record["max"]) == (float(expected.min()), float(expected.max()))
        levels = read_levels(record["depth"])
        assert levels.min() == 0 and levels.max() == 65535
        assert record["scale"] == pytest.approx((record["max"] - record["min"]) / 65535, rel=1e-12)
        restored = levels * record["scale"] + record["offset"]
        assert np.abs(restored - expected).max() <= record["scale"]  # within one quantisation step
        assert Image.open(record["preview"]).size == (record["width"], record["height"])
        assert (record["kind"], record["unit"]) == ("relative", "relative (larger is nearer)")


def test_exif_rotated_jpeg_gives_the_displayed_images_map(tiny_depth_anything_dir: Path, tmp_path: Path) -> None:
    displayed = Image.open(SAMPLE_DATA / "rocket.jpg").convert("RGB").resize((120, 200))
    stored = displayed.transpose(Image.Transpose.ROTATE_90)  # orientation 6 turns it back for display
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "rotated.jpg", quality=95, exif=exif.tobytes())
    upright(tmp_path / "rotated.jpg").save(tmp_path / "upright.png")
    code, [rotated, straight], _ = depth(str(tmp_path / "rotated.jpg"), str(tmp_path / "upright.png"), "--model",
                                         str(tiny_depth_anything_dir), "--out-dir", str(tmp_path / "out"), "--npy", "-b", "1")
    assert code == 0
    assert (rotated["width"], rotated["height"]) == (120, 200) == (straight["width"], straight["height"])
    assert Image.open(rotated["depth"]).size == (120, 200) == Image.open(rotated["preview"]).size
    assert np.array_equal(np.load(rotated["npy"]), np.load(straight["npy"]))
    assert np.array_equal(np.load(rotated["npy"]), reference(tiny_depth_anything_dir, tmp_path / "rotated.jpg"))


def test_mixed_sizes_in_one_batch_give_each_image_its_single_result(tiny_depth_anything_dir: Path,
                                                                     tmp_path: Path) -> None:
    from transformers import AutoImageProcessor

    upright(SAMPLE_DATA / "chelsea.jpg").transpose(Image.Transpose.ROTATE_90).save(tmp_path / "portrait.png")
    paths = [SAMPLE_DATA / n for n in ("chelsea.jpg", "astronaut.jpg", "rocket.jpg", "camera.jpg")]
    paths += [tmp_path / "portrait.png", non_square(tmp_path)]
    processor = AutoImageProcessor.from_pretrained(tiny_depth_anything_dir)
    shapes = [tuple(processor(images=upright(p), return_tensors="pt")["pixel_values"].shape[-2:]) for p in paths]
    assert len(set(shapes)) == 4 and len(set(shapes)) < len(shapes)  # several sizes, some shared
    maps = {}
    for batch in ("1", "6"):
        code, records, _ = depth(*map(str, paths), "--model", str(tiny_depth_anything_dir), "--npy", "-b", batch,
                                 "--out-dir", str(tmp_path / f"b{batch}"), "--workers", "0")
        assert code == 0
        maps[batch] = [np.load(r["npy"]) for r in records]
    for shape, single, batched in zip(shapes, maps["1"], maps["6"], strict=True):
        if shapes.count(shape) == 1:  # alone at its size: the very same model call
            assert np.array_equal(single, batched)
        else:  # batched with same-size images: equal up to the float rounding of batched matrix products
            np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-6 * float(np.abs(single).max()))


def test_the_model_runs_once_per_processed_size() -> None:
    from vitkit.models.backends.hf_depth import PadToLargest, forward_by_size

    calls: list[tuple[int, ...]] = []

    def fake_model(pixel_values: torch.Tensor) -> types.SimpleNamespace:
        calls.append(tuple(pixel_values.shape))
        return types.SimpleNamespace(predicted_depth=pixel_values[:, 0] * 2)  # (B, h, w)

    images = [torch.rand(3, h, w) for h, w in ((14, 28), (28, 14), (14, 28), (28, 28))]
    batch = PadToLargest()([{"pixel_values": image} for image in images])
    assert batch["pixel_values"].shape == (4, 3, 28, 28) and batch["sizes"].tolist() == [[14, 28], [28, 14], [14, 28], [28, 28]]
    depths = forward_by_size(fake_model, batch)
    assert calls == [(2, 3, 14, 28), (1, 3, 28, 14), (1, 3, 28, 28)]
    assert all(torch.equal(d, image[0] * 2) for d, image in zip(depths, images, strict=True))


def test_thin_and_one_pixel_images_get_maps(tiny_depth_anything_dir: Path, tmp_path: Path) -> None:
    """Beyond 56/14 = 4:1 the tiny processor would round the short side to 0 pixels: such images are
    squashed to that ratio first; the maps still come out at the original size."""
    paths = []
    for size in [(1, 5000), (5000, 1), (1, 1), (200, 20)]:
        paths.append(tmp_path / f"thin-{size[0]}x{size[1]}.png")
        Image.open(SAMPLE_DATA / "rocket.jpg").convert("RGB").resize(size).save(paths[-1])
    code, records, stderr = depth(*map(str, paths), "--model", str(tiny_depth_anything_dir), "--out-dir",
                                  str(tmp_path / "out"), "--npy", "--workers", "0")
    assert code == 0, stderr
    for record, size in zip(records, [(1, 5000), (5000, 1), (1, 1), (200, 20)], strict=True):
        assert (record["width"], record["height"]) == size
        assert np.load(record["npy"]).shape == size[::-1] and Image.open(record["depth"]).size == size


# --- files, records, failures ---------------------------------------------------------------------

def test_cli_and_library_end_to_end_with_broken_files(tiny_depth_anything_dir: Path, photos: Path,
                                                       tmp_path: Path) -> None:
    (photos / "more").mkdir()
    shutil.copy(photos / "chelsea.jpg", photos / "more" / "chelsea.jpg")  # same name, another folder
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in photos.rglob("*") if p.is_file()}
    out = tmp_path / "out"
    cli = run_vitkit("depth", str(photos), "--model", str(tiny_depth_anything_dir), "--out-dir", str(out), "-b", "3")
    assert cli.returncode == 1 and "3 of 10 inputs failed" in cli.stderr
    records = parse_jsonl(cli.stdout)
    relative = [Path(r["path"]).relative_to(photos).as_posix() for r in records]
    assert relative == sorted([f"broken/{n}" for n in BROKEN_SAMPLES] + GOOD_SAMPLES + ["more/chelsea.jpg"])
    written = []
    for record, name in zip(records, relative):
        if name.startswith("broken/"):
            assert set(record) == {"path", "error"} and record["error"]
            continue
        assert list(record) == RECORD_KEYS
        mirrored = out / "@root" / Path(record["path"]).relative_to("/")  # absolute inputs: files.py's rule
        assert (record["depth"], record["preview"]) == (f"{mirrored}.depth.png", f"{mirrored}.depth.preview.png")
        for key in ("depth", "preview"):
            assert Path(record[key]).is_file() and Path(record[key]).is_relative_to(out)
            assert Image.open(record[key]).size == (record["width"], record["height"])
            written.append(record[key])
    assert len(written) == len(set(written)) == 2 * 7
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == sorted(Path(w).name for w in written)
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in photos.rglob("*") if p.is_file()} == before
    library = [r.to_dict() for r in vitkit.depth(str(photos), model=str(tiny_depth_anything_dir), out_dir=str(out),
                                                 batch_size=3)]
    assert library == records


def test_kind_and_unit_come_from_the_config(tiny_metric_depth_anything_dir: Path, tiny_dpt_dir: Path,
                                            tmp_path: Path) -> None:
    path = str(SAMPLE_DATA / "chelsea.jpg")
    [metric] = list(vitkit.depth(path, model=str(tiny_metric_depth_anything_dir), out_dir=str(tmp_path / "m")))
    assert (metric.kind, metric.unit) == ("metric", "metres")
    assert 0 <= metric.min <= metric.max <= 20  # the metric head's sigmoid times max_depth
    [dpt] = list(vitkit.depth(path, model=str(tiny_dpt_dir), out_dir=str(tmp_path / "d")))
    assert (dpt.kind, dpt.unit) == ("relative", "relative (larger is nearer)")
    with pytest.raises(UsageError, match="relative or metric"):
        read_depth_kind(types.SimpleNamespace(model_type="glpn"), "some-glpn")
    # Meta's DPT heads on DINOv2 (dpt-dinov2-*-nyu/kitti) predict metres though their model_type is "dpt"
    from transformers import Dinov2Config, DPTConfig

    on_dinov2 = DPTConfig(backbone_config=Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                       out_features=["stage1", "stage2"]))
    with pytest.raises(UsageError, match="relative or metric"):
        read_depth_kind(on_dinov2, "dpt-dinov2")
    assert read_depth_kind(DPTConfig(), "dpt").kind == "relative"


def test_usage_errors_exit_2(tiny_depth_anything_dir: Path, tiny_timm_dir: Path) -> None:
    code, _, stderr = depth(str(SAMPLE_DATA / "chelsea.jpg"), "--model", str(tiny_depth_anything_dir))
    assert code == 2 and "--out-dir is required" in stderr
    code, _, stderr = depth(str(SAMPLE_DATA / "chelsea.jpg"), "--model", str(tiny_timm_dir), "--out-dir", "x")
    assert code == 2 and "cannot depth" in stderr


def test_catalogue_lists_the_depth_models() -> None:
    from vitkit.models.registry import CATALOGUE, get_default_model, resolve

    assert get_default_model("depth") == "depth-anything-s"
    assert resolve(None, "depth").source == "depth-anything/Depth-Anything-V2-Small-hf"
    assert resolve("dpt-large", "depth").source == "Intel/dpt-large"
    assert CATALOGUE["depth-anything-s"].params_millions == 24.8 and CATALOGUE["dpt-large"].params_millions == 343.0
    listed = run_vitkit("models", "list", "--task", "depth", "--format", "jsonl")
    assert {row["model"] for row in parse_jsonl(listed.stdout)} == {"depth-anything-s", "dpt-large"}


# --- the files' arithmetic --------------------------------------------------------------------------

def test_quantised_levels_restore_values_within_half_a_level() -> None:
    values = np.random.default_rng(0).normal(3.0, 2.0, (37, 53)).astype(np.float32)
    low, high = depth_maps.value_range(values)
    q = depth_maps.quantise(values, low, high)
    assert q.levels.dtype == np.uint16 and q.levels.min() == 0 and q.levels.max() == 65535
    # half a level, and float32 arithmetic's share: (65535 levels) x 2^-24 is under 1% of a level
    assert np.abs(q.levels * q.scale + q.offset - values).max() <= 0.51 * q.scale
    flat = depth_maps.quantise(np.full((4, 5), 2.5, np.float32), 2.5, 2.5)
    assert flat.scale == 0.0 and flat.offset == 2.5 and not flat.levels.any()
    assert depth_maps.value_range(np.array([[1.0, np.nan]], np.float32)) is None


def test_preview_is_viridis_near_bright_with_a_legend_only_where_it_fits() -> None:
    assert np.abs(depth_maps.VIRIDIS[0].astype(int) - (68, 1, 84)).max() <= 4  # matplotlib's endpoints
    assert np.abs(depth_maps.VIRIDIS[255].astype(int) - (253, 231, 37)).max() <= 4
    levels = np.tile(np.linspace(0, 65535, 200).astype(np.uint16), (120, 1))  # (120, 200) left to right
    relative = np.array(depth_maps.preview_image(levels, True, 0.0, 1.0, "relative (larger is nearer)"))
    metric = np.array(depth_maps.preview_image(levels, False, 0.5, 9.0, "metres"))
    assert relative.shape == metric.shape == (120, 200, 3)
    assert relative[0, -1].sum() > relative[0, 0].sum() and metric[0, 0].sum() > metric[0, -1].sum()  # near bright
    bare = np.array(Image.fromarray(depth_maps.VIRIDIS[(levels >> 8).astype(np.uint8)]))
    assert not np.array_equal(relative[-40:, :80], bare[-40:, :80])  # the legend, bottom left
    assert np.array_equal(relative[:60], bare[:60])  # and nothing else changed
    tiny = np.array(depth_maps.preview_image(levels[:20, :40], True, 0.0, 1.0, ""))
    assert np.array_equal(tiny, bare[:20, :40])
