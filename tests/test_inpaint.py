"""`vitkit inpaint`: exact patch selection, untouched pixels outside it, seeds, batching, norm_pix_loss, CLI."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from typer.testing import CliRunner

from tests.conftest import BROKEN_SAMPLES, GOOD_SAMPLES, SAMPLE_DATA, SAMPLE_ERRORS, parse_jsonl
from vitkit.cli import app
from vitkit.models.backends.mae import PatchGrid, denormalise_patches
from vitkit.tasks.inpaint_masks import box_patch_mask

runner = CliRunner()
NORMPIX_GRID = 8  # tiny_transformers_mae_normpix_dir: 64 px input, 8 px patches
PLAIN_GRID = 2  # tiny_transformers_mae_dir: 32 px input, 16 px patches


def inpaint(*args: str) -> tuple[int, list[dict], str]:
    result = runner.invoke(app, ["inpaint", *args])
    return result.exit_code, parse_jsonl(result.stdout), result.stderr


def upright(path: Path | str) -> np.ndarray:
    return np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))


def read(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def overlapping_patches(box: tuple[float, ...], width: int, height: int, grid: int) -> set[tuple[int, int]]:
    """Independently of vitkit: the patches whose rectangle, mapped back onto the original image by the
    processor's stretch, shares a positive area with the box."""
    x0, y0, x1, y1 = box
    found = set()
    for row, col in itertools.product(range(grid), range(grid)):
        left, right = col * width / grid, (col + 1) * width / grid
        top, bottom = row * height / grid, (row + 1) * height / grid
        if min(right, x1) - max(left, x0) > 0 and min(bottom, y1) - max(top, y0) > 0:
            found.add((row, col))
    return found


def patch_of_pixels(height: int, width: int, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """The patch row of each pixel row and the patch column of each pixel column (by the pixel's centre)."""
    rows = np.floor((np.arange(height) + 0.5) * grid / height).astype(int)
    cols = np.floor((np.arange(width) + 0.5) * grid / width).astype(int)
    return rows, cols


def region(patches: set[tuple[int, int]], height: int, width: int, grid: int) -> np.ndarray:
    rows, cols = patch_of_pixels(height, width, grid)
    chosen = np.zeros((grid, grid), dtype=bool)
    for row, col in patches:
        chosen[row, col] = True
    return chosen[rows[:, None], cols[None, :]]


def changed_patches(original: np.ndarray, composite: np.ndarray, grid: int) -> set[tuple[int, int]]:
    ys, xs = np.nonzero(np.any(original != composite, axis=-1))
    rows, cols = patch_of_pixels(*original.shape[:2], grid)
    return set(zip(rows[ys].tolist(), cols[xs].tolist()))


# --- patch selection and de-normalisation, without a model -------------------------------------------

def test_box_patch_mask_is_exactly_the_overlapping_patches() -> None:
    rng = random.Random(0)
    cases = [((64, 128, 192, 256), 512, 512), ((0, 0, 512, 512), 512, 512), ((63.5, 0, 64, 1), 512, 512),
             ((64, 64, 64.25, 64.25), 512, 512), ((-50, -50, 10, 10), 451, 300), ((440, 290, 900, 900), 451, 300)]
    for _ in range(300):
        width, height = rng.randint(9, 700), rng.randint(9, 700)
        x0, y0 = rng.uniform(-20, width), rng.uniform(-20, height)
        x = [x0, x0 + rng.uniform(0.1, width), y0, y0 + rng.uniform(0.1, height)]
        # Edges on patch boundaries (multiples of width / grid) must not take the next patch.
        if rng.random() < 0.3:
            x = [round(v * NORMPIX_GRID / width) * width / NORMPIX_GRID if i < 2 else v for i, v in enumerate(x)]
        if x[1] > x[0]:
            cases.append(((x[0], x[2], x[1], x[3]), width, height))
    for box, width, height in cases:
        mask = box_patch_mask(box, width, height, PatchGrid(NORMPIX_GRID, NORMPIX_GRID, 8))
        found = set(zip(*map(np.ndarray.tolist, np.nonzero(mask))))
        assert found == overlapping_patches(box, width, height, NORMPIX_GRID), (box, width, height)


def test_denormalise_uses_own_statistics_when_visible_and_the_visible_average_when_masked() -> None:
    torch.manual_seed(0)
    eps = 1e-6
    means = torch.tensor([[0.5, -1.0, 2.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.3, 0.2, 0.1, 0.0]])  # (B=3, N=4)
    stds = torch.tensor([[1.0, 0.5, 2.0, 3.0], [0.1, 0.1, 0.1, 0.1], [1.0, 1.0, 1.0, 1.0]])
    noise = torch.randn(3, 4, 12)
    target = noise * stds[..., None] + means[..., None]  # (B, N, D) patches of the input
    masked = torch.tensor([[False, True, False, True], [False, False, False, False], [True, True, True, True]])
    normalised = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + eps).sqrt()
    guess = torch.randn(3, 4, 12)  # what the decoder "predicts" for masked patches, in normalised units
    predicted = torch.where(masked[..., None], guess, normalised)

    result = denormalise_patches(predicted, target, masked)

    visible = ~masked
    torch.testing.assert_close(result[visible], target[visible], atol=1e-5, rtol=1e-5)
    # image 0: masked patches 1 and 3 take the mean of patches 0 and 2's means and variances
    t = target[0].double().numpy()
    mean = (t[0].mean() + t[2].mean()) / 2
    var = (t[0].var(ddof=1) + t[2].var(ddof=1)) / 2
    for patch in (1, 3):
        expected = guess[0, patch].double().numpy() * np.sqrt(var + eps) + mean
        np.testing.assert_allclose(result[0, patch].numpy(), expected, rtol=1e-5, atol=1e-5)
    # image 2: nothing visible, so the processor's dataset statistics (mean 0, variance 1)
    torch.testing.assert_close(result[2], guess[2], atol=1e-5, rtol=1e-5)
    # each image's estimate is its own: dropping the other images changes nothing
    torch.testing.assert_close(denormalise_patches(predicted[:1], target[:1], masked[:1]), result[:1])


# --- with models --------------------------------------------------------------------------------------

@pytest.mark.parametrize("fixture", ["tiny_transformers_mae_dir", "tiny_transformers_mae_normpix_dir"])
def test_mask_ratio_zero_gives_back_the_original(fixture: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    model_dir = request.getfixturevalue(fixture)
    paths = [str(SAMPLE_DATA / name) for name in GOOD_SAMPLES]
    code, records, _ = inpaint(*paths, "-m", str(model_dir), "--mask-ratio", "0", "--out-dir", str(tmp_path),
                               "--workers", "0")
    assert code == 0 and [r["path"] for r in records] == paths
    for record in records:
        assert record["masked_fraction"] == 0.0
        assert np.array_equal(read(record["output"]), upright(record["path"]))


def test_box_masks_exactly_the_patches_it_overlaps(tiny_transformers_mae_normpix_dir: Path, tmp_path: Path) -> None:
    paths = [str(SAMPLE_DATA / name) for name in ("astronaut.jpg", "chelsea.jpg", "coffee.jpg", "hubble_deep_field.jpg")]
    for n, box in enumerate([(100, 50, 260, 170), (64, 128, 192, 256), (300.5, 10, 2000, 57.2)]):
        out = tmp_path / str(n)
        code, records, _ = inpaint(*paths, "-m", str(tiny_transformers_mae_normpix_dir),
                                   "--box", ",".join(map(str, box)), "--out-dir", str(out), "--workers", "0", "-b", "4")
        assert code == 0
        for record in records:
            original, composite = upright(record["path"]), read(record["output"])
            height, width = original.shape[:2]
            expected = overlapping_patches(box, width, height, NORMPIX_GRID)
            assert composite.shape == original.shape
            assert record["masked_fraction"] == len(expected) / NORMPIX_GRID**2
            outside = ~region(expected, height, width, NORMPIX_GRID)
            assert np.array_equal(composite[outside], original[outside])
            # every hidden patch was reconstructed (a random decoder never reproduces a photo's pixels)
            assert changed_patches(original, composite, NORMPIX_GRID) == expected


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_mask_image_is_stretched_and_hides_every_patch_it_touches(mode: str, tiny_transformers_mae_normpix_dir: Path,
                                                                  tmp_path: Path) -> None:
    painted = np.zeros((50, 100), dtype=np.uint8)
    painted[10:30, 20:45] = 255  # as fractions of the image: x in [0.2, 0.45), y in [0.2, 0.6)
    if mode == "L":
        Image.fromarray(painted, "L").save(tmp_path / "mask.png")
    else:  # white everywhere, but transparent outside the rectangle: transparent is not painted
        rgba = np.dstack([np.full((50, 100, 3), 255, dtype=np.uint8), painted])
        Image.fromarray(rgba, "RGBA").save(tmp_path / "mask.png")
    path = str(SAMPLE_DATA / "coffee.jpg")
    code, [record], _ = inpaint(path, "-m", str(tiny_transformers_mae_normpix_dir), "--mask", str(tmp_path / "mask.png"),
                                "--out-dir", str(tmp_path / "out"), "--workers", "0")
    assert code == 0
    original = upright(path)
    height, width = original.shape[:2]
    expected = overlapping_patches((0.2 * width, 0.2 * height, 0.45 * width, 0.6 * height), width, height, NORMPIX_GRID)
    assert changed_patches(original, read(record["output"]), NORMPIX_GRID) == expected
    assert record["masked_fraction"] == len(expected) / NORMPIX_GRID**2


def test_seed_reproduces_and_batches_do_not_matter(tiny_transformers_mae_normpix_dir: Path, tmp_path: Path) -> None:
    paths = [str(SAMPLE_DATA / name) for name in GOOD_SAMPLES]
    model = ("-m", str(tiny_transformers_mae_normpix_dir), "--workers", "0")
    runs = {}
    for name, args in {"seed1-b1": ("--seed", "1", "-b", "1"), "seed1-b3": ("--seed", "1", "-b", "3"),
                       "seed2": ("--seed", "2", "-b", "6")}.items():
        code, records, _ = inpaint(*paths, *model, *args, "--out-dir", str(tmp_path / name))
        assert code == 0
        assert all(r["masked_fraction"] == 48 / 64 for r in records)  # round(64 * 0.75) patches
        runs[name] = [read(r["output"]) for r in records]
    for one, three, other, path in zip(runs["seed1-b1"], runs["seed1-b3"], runs["seed2"], paths):
        assert np.array_equal(one, three)
        original = upright(path)
        hidden_1, hidden_2 = changed_patches(original, one, NORMPIX_GRID), changed_patches(original, other, NORMPIX_GRID)
        assert len(hidden_1) == len(hidden_2) == 48 and hidden_1 != hidden_2
    # different images get different masks from the same seed
    assert len({frozenset(changed_patches(upright(p), r, NORMPIX_GRID)) for p, r in zip(paths, runs["seed1-b1"])}) > 1


def test_masks_built_in_worker_processes_equal_in_process_ones(tiny_transformers_mae_normpix_dir: Path,
                                                               tmp_path: Path) -> None:
    """Each image's mask is made in preprocess, so in dataloader workers: from its path (the seed) and size."""
    paths = [str(SAMPLE_DATA / name) for name in GOOD_SAMPLES]
    outputs = {}
    for workers in ("0", "2"):
        code, records, _ = inpaint(*paths, "-m", str(tiny_transformers_mae_normpix_dir), "--seed", "5", "-b", "2",
                                   "--workers", workers, "--out-dir", str(tmp_path / workers))
        assert code == 0 and [r["path"] for r in records] == paths
        outputs[workers] = [read(r["output"]) for r in records]
    assert all(np.array_equal(a, b) for a, b in zip(outputs["0"], outputs["2"], strict=True))


def test_boxes_with_different_patch_counts_batch_like_single_images(tiny_transformers_mae_normpix_dir: Path,
                                                                    tmp_path: Path) -> None:
    paths = [str(SAMPLE_DATA / name) for name in GOOD_SAMPLES]  # different sizes: different patch counts
    outputs = {}
    for size in ("1", "6"):
        code, records, _ = inpaint(*paths, "-m", str(tiny_transformers_mae_normpix_dir), "--box", "90,40,250,300",
                                   "-b", size, "--workers", "0", "--out-dir", str(tmp_path / size))
        assert code == 0 and len({r["masked_fraction"] for r in records}) > 1
        outputs[size] = [read(r["output"]) for r in records]
    for single, batched in zip(outputs["1"], outputs["6"]):
        assert np.array_equal(single, batched)


def test_reconstruction_matches_transformers_reference(tiny_transformers_mae_normpix_dir: Path) -> None:
    """transformers alone, with its own masking and the de-normalisation written out by hand."""
    from transformers import ViTImageProcessor, ViTMAEForPreTraining

    from vitkit.models.loading import load_model
    from vitkit.models.registry import INPAINT, resolve
    from vitkit.tasks.inpaint import InpaintOptions, InpaintTask

    image = Image.fromarray(upright(SAMPLE_DATA / "chelsea.jpg"))
    processor = ViTImageProcessor.from_pretrained(tiny_transformers_mae_normpix_dir)
    model = ViTMAEForPreTraining.from_pretrained(tiny_transformers_mae_normpix_dir).eval()
    pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]  # (1, 3, 64, 64)
    masked = torch.zeros(1, 64, dtype=torch.bool)
    masked[0, [9, 10, 17, 18, 19, 40, 63]] = True
    model.config.mask_ratio = 1 - 57 / 64
    with torch.no_grad():
        out = model(pixel_values=pixel_values, noise=masked.float())
    assert torch.equal(out.mask.bool(), masked)

    patches = pixel_values[0].reshape(3, 8, 8, 8, 8).permute(1, 3, 2, 4, 0).reshape(64, 192).double().numpy()
    logits = out.logits[0].double().numpy()
    mean, var = patches.mean(1, keepdims=True), patches.var(1, ddof=1, keepdims=True)
    visible = ~masked[0].numpy()
    mean[~visible], var[~visible] = mean[visible].mean(), var[visible].mean()
    values = (logits * np.sqrt(var + 1e-6) + mean).reshape(8, 8, 8, 8, 3).transpose(4, 0, 2, 1, 3).reshape(3, 64, 64)
    std, centre = np.array(processor.image_std)[:, None, None], np.array(processor.image_mean)[:, None, None]
    expected = np.clip(np.rint((values * std + centre) * 255), 0, 255).transpose(1, 2, 0)

    loaded = load_model(resolve(str(tiny_transformers_mae_normpix_dir), INPAINT), INPAINT, "cpu", "fp32")
    task = InpaintTask(loaded, InpaintOptions(out_dir="unused"))
    with torch.inference_mode():
        [result] = task.reconstructions(task.forward({"pixel_values": pixel_values, "noise": masked.float()}))
    assert np.abs(np.asarray(result.predicted).astype(int) - expected).max() <= 1
    resized = np.asarray(image.resize((64, 64), Image.Resampling.BILINEAR)).astype(int)
    pasted = np.asarray(result.pasted).astype(int)
    keep = np.repeat(np.repeat(visible.reshape(8, 8), 8, 0), 8, 1)
    assert np.abs(pasted[keep] - resized[keep]).max() <= 1  # visible patches: the processor's own input, un-normalised


def test_every_model_call_is_in_forward_under_the_runners_context(tiny_transformers_mae_normpix_dir: Path,
                                                                   tmp_path: Path) -> None:
    """The task contract: the MAE runs in forward (where the runner's out-of-memory back-off and fp32
    rerun see it), in inference mode; postprocess and the output stage never call the model."""
    from vitkit.inputs.discover import InputItem
    from vitkit.models.loading import load_model
    from vitkit.models.registry import INPAINT, resolve
    from vitkit.runtime.runner import RunOptions, run
    from vitkit.tasks.inpaint import InpaintOptions, InpaintTask

    loaded = load_model(resolve(str(tiny_transformers_mae_normpix_dir), INPAINT), INPAINT, "cpu", "fp32")
    task = InpaintTask(loaded, InpaintOptions(out_dir=str(tmp_path), box=(90, 40, 250, 300), grid=True))
    inside_forward, calls = [], []
    forward = task.forward

    def spied_forward(inputs: dict) -> object:
        inside_forward.append(True)
        try:
            return forward(inputs)
        finally:
            inside_forward.pop()

    task.forward = spied_forward  # type: ignore[method-assign]
    hook = loaded.module.register_forward_hook(
        lambda module, args, output: calls.append((bool(inside_forward), torch.is_inference_mode_enabled())))
    try:
        records = [r.to_dict() for r in run(task, [InputItem(str(SAMPLE_DATA / n)) for n in GOOD_SAMPLES],
                                            RunOptions(batch_size=4, workers=0))]
    finally:
        hook.remove()
    assert all("output" in r for r in records)
    assert len(calls) >= 2 and all(call == (True, True) for call in calls)  # several boxes' patch counts: groups


def test_a_box_outside_an_image_is_that_inputs_error(tiny_transformers_mae_normpix_dir: Path, tmp_path: Path) -> None:
    inside, outside = str(SAMPLE_DATA / "rocket.jpg"), str(SAMPLE_DATA / "chelsea.jpg")  # 640 x 427, 451 x 300
    height, width = upright(outside).shape[:2]
    code, records, stderr = inpaint(inside, outside, "-m", str(tiny_transformers_mae_normpix_dir),
                                    "--box", "0,400,50,420.5", "--out-dir", str(tmp_path), "--workers", "0")
    assert code == 1
    message = f"--box 0,400,50,420.5 lies outside the image ({width}×{height})"
    assert records[1] == {"path": outside, "error": message}
    assert f"error: {outside}: {message}" in stderr
    assert records[0]["masked_fraction"] > 0
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["rocket.jpg.inpaint.png"]


# --- the command line ----------------------------------------------------------------------------------

def test_cli_end_to_end_with_broken_files(tiny_transformers_mae_dir: Path, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, records, stderr = inpaint(str(photos), "-m", str(tiny_transformers_mae_dir), "--out-dir", str(out), "--grid")
    assert code == 1
    expected_order = sorted([str(photos / name) for name in GOOD_SAMPLES] +
                            [str(photos / "broken" / name) for name in BROKEN_SAMPLES])
    assert [r["path"] for r in records] == expected_order
    for record in records:
        if Path(record["path"]).parent.name == "broken":
            assert set(record) == {"path", "error"}
            continue
        assert set(record) == {"path", "width", "height", "output", "masked_fraction", "grid"}
        assert record["masked_fraction"] == pytest.approx(0.75)
        original = upright(record["path"])
        composite = read(record["output"])
        assert composite.shape == original.shape == (record["height"], record["width"], 3)
        assert Path(record["output"]).is_relative_to(out) and record["output"].endswith(".inpaint.png")
        outside = ~region(changed_patches(original, composite, PLAIN_GRID), *original.shape[:2], PLAIN_GRID)
        assert np.array_equal(composite[outside], original[outside])
        grid = Image.open(record["grid"])
        scale = min(1.0, 512 / max(record["width"], record["height"]))
        assert grid.size == (4 * round(record["width"] * scale) + 3 * 8, round(record["height"] * scale))
    assert "3 of 9 inputs failed" in stderr
    assert not any(p.name.endswith(".png") for p in photos.rglob("*"))  # inputs left alone


@pytest.mark.parametrize("args, message", [
    (["--mask-ratio", "0.5"], "--out-dir is required"),
    (["--box", "1,2,3", "--out-dir", "o"], "is not four numbers"),
    (["--box", "5,5,5,9", "--out-dir", "o"], "is empty"),
    (["--box", "1,2,3,4", "--mask", "m.png", "--out-dir", "o"], "cannot be combined"),
    (["--box", "1,2,3,4", "--seed", "3", "--out-dir", "o"], "--seed only applies"),
    (["--mask", "m.png", "--mask-ratio", "0.5", "--out-dir", "o"], "--mask-ratio only applies"),
])
def test_usage_errors_exit_2(args: list[str], message: str, tiny_transformers_mae_dir: Path) -> None:
    code, _, stderr = inpaint(str(SAMPLE_DATA / "chelsea.jpg"), "-m", str(tiny_transformers_mae_dir), *args)
    assert code == 2 and message in stderr


def test_unreadable_mask_and_bad_ratio_exit_2(tiny_transformers_mae_dir: Path, tmp_path: Path) -> None:
    image = str(SAMPLE_DATA / "chelsea.jpg")
    code, _, stderr = inpaint(image, "-m", str(tiny_transformers_mae_dir), "--out-dir", str(tmp_path),
                              "--mask", str(SAMPLE_ERRORS / "truncated.jpg"))
    assert code == 2 and "cannot read --mask" in stderr
    code, _, _ = inpaint(image, "-m", str(tiny_transformers_mae_dir), "--out-dir", str(tmp_path), "--mask-ratio", "1.5")
    assert code == 2
    assert not list(tmp_path.iterdir())


def test_help_shows_an_example() -> None:
    result = runner.invoke(app, ["inpaint", "--help"])
    assert result.exit_code == 0 and "Example: vitkit inpaint" in result.stdout


def test_composite_and_grid_are_the_reconstruction_pasted_into_the_hidden_patches(
        tiny_transformers_mae_normpix_dir: Path, tmp_path: Path) -> None:
    """The full-size files, against the same composite written out with numpy: bicubic-resized reconstruction
    where a pixel's centre lies in a hidden patch, the original everywhere else; grey there in the grid."""
    from vitkit.models.loading import load_model
    from vitkit.models.registry import INPAINT, resolve
    from vitkit.tasks.inpaint import InpaintOptions, InpaintTask, side_by_side
    from vitkit.tasks.inpaint_masks import pixel_mask

    path = tmp_path / "odd.png"  # odd sides: patch edges fall between pixels
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (301, 203, 3), dtype=np.uint8)).save(path)
    loaded = load_model(resolve(str(tiny_transformers_mae_normpix_dir), INPAINT), INPAINT, "cpu", "fp32")
    task = InpaintTask(loaded, InpaintOptions(out_dir=str(tmp_path / "out"), grid=True), [str(path)])
    pixel_values = task.processor(images=Image.open(path), return_tensors="pt")["pixel_values"]
    masked = torch.zeros(1, 64)
    masked[0, [0, 9, 10, 27, 36, 63]] = 1.0
    with torch.inference_mode():
        [result] = task.reconstructions(task.forward({"pixel_values": pixel_values, "noise": masked}))
    composite, grid = task._files(str(path), result)

    original = np.asarray(Image.open(path))
    hidden = pixel_mask(result.patches, 203, 301)[..., None]
    assert 0 < hidden.sum() < hidden.size
    filled = np.asarray(result.pasted.resize((203, 301), Image.Resampling.BICUBIC))
    expected = np.where(hidden, filled, original)
    assert np.array_equal(np.asarray(composite.image), expected)
    assert not np.array_equal(expected, original)
    panels = [Image.fromarray(original), Image.fromarray(np.where(hidden, np.uint8(128), original)),
              result.predicted.resize((203, 301), Image.Resampling.BICUBIC), Image.fromarray(expected)]
    assert np.array_equal(np.asarray(grid.image), np.asarray(side_by_side(panels)))
