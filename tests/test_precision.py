"""--precision int8/bf16, --compile, thread settings and uint8 pixel transfer: same answers, faster paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from tests.conftest import GOOD_SAMPLES, SAMPLE_DATA, parse_jsonl
from vitkit.models import acceleration
from vitkit.cli import app
from vitkit.inputs.decode import decode_image
from vitkit.inputs.discover import InputItem
from vitkit.errors import UsageError
from vitkit.models.loading import load_model, resolve_precision, resolve_precision_name
from vitkit.inputs.pixels import DeviceNormalize, split_normalize
from vitkit.models.precision_check import compare_probabilities
from vitkit.models.registry import CLASSIFY, LABEL, resolve
from vitkit.runtime.runner import RunOptions, run
from vitkit.tasks.classify import ClassifyTask

runner = CliRunner()
PATHS = [str(SAMPLE_DATA / name) for name in GOOD_SAMPLES]


def probabilities(model_dir: Path, precision: str) -> np.ndarray:
    """(N, 1000) class probabilities for the sample photos, through the real loader and runner."""
    task = ClassifyTask(load_model(resolve(str(model_dir), CLASSIFY), CLASSIFY, "cpu", precision), top_k=1000)
    rows = np.zeros((len(PATHS), 1000))
    for i, record in enumerate(run(task, [InputItem(p) for p in PATHS], RunOptions(batch_size=3, workers=0))):
        for p in record.fields["predictions"]:
            rows[i, p["class_id"]] = p["score"]
    return rows


def test_precision_names_resolve_per_device() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision_name("auto", cpu) == "fp32"
    assert resolve_precision("int8", cpu) == torch.float32  # compute outside the int8 Linear layers
    with pytest.raises(UsageError, match="CPU only"):
        resolve_precision_name("int8", torch.device("cuda"))
    with pytest.raises(UsageError, match="unknown precision") as raised:
        resolve_precision_name("fp8", cpu)
    assert "int8" in (raised.value.hint or "")


def test_int8_quantises_every_linear_layer_and_stays_close_to_fp32(tiny_timm_dir: Path) -> None:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    spec = resolve(str(tiny_timm_dir), CLASSIFY)
    int8, fp32 = load_model(spec, CLASSIFY, "cpu", "int8"), load_model(spec, CLASSIFY, "cpu", "fp32")
    assert (int8.precision, fp32.precision) == ("int8", "fp32")
    assert int8.module is not fp32.module  # the cache keys differ
    layers = list(int8.module.modules())
    assert any(isinstance(m, DynamicLinear) for m in layers)
    assert not any(type(m) is torch.nn.Linear for m in layers)
    agreement = compare_probabilities(probabilities(tiny_timm_dir, "fp32"), probabilities(tiny_timm_dir, "int8"))
    assert agreement.images == len(PATHS)
    assert agreement.top1_agreement == 1.0, agreement.describe()
    # Per-tensor int8 weights on the tiny model's deliberately wide random head; real heads move less.
    assert 0 < agreement.max_abs_prob_diff < 0.1, agreement.describe()


def test_bf16_autocast_stays_close_to_fp32(tiny_timm_dir: Path) -> None:
    agreement = compare_probabilities(probabilities(tiny_timm_dir, "fp32"), probabilities(tiny_timm_dir, "bf16"))
    assert agreement.top1_agreement == 1.0, agreement.describe()
    assert 0 < agreement.max_abs_prob_diff < 0.02, agreement.describe()


def test_int8_open_clip_encodes_text_and_images(tiny_open_clip_dir: Path) -> None:
    """label builds its classifier with the text tower, whose dtype open_clip reads from an MLP weight."""
    result = runner.invoke(app, ["label", *PATHS, "--model", str(tiny_open_clip_dir), "--labels", "cat,dog,rocket",
                                 "--precision", "int8"])
    assert result.exit_code == 0, result.stderr
    assert all(len(record["predictions"]) == 3 for record in parse_jsonl(result.stdout))
    assert "deprecated" not in result.stderr


@pytest.mark.parametrize("command", ["detect", "inpaint"])
def test_int8_transformers_models_run(command: str, tiny_detr_dir: Path, tiny_transformers_mae_dir: Path,
                                      tmp_path: Path) -> None:
    model = tiny_detr_dir if command == "detect" else tiny_transformers_mae_dir
    extra = ["--out-dir", str(tmp_path)] if command == "inpaint" else []
    result = runner.invoke(app, [command, *PATHS[:2], "--model", str(model), "--precision", "int8", *extra])
    assert result.exit_code == 0, result.stderr
    assert len(parse_jsonl(result.stdout)) == 2


def test_int8_on_a_gpu_is_a_usage_error(tiny_timm_dir: Path) -> None:
    result = runner.invoke(app, ["classify", PATHS[0], "--model", str(tiny_timm_dir), "--precision", "int8",
                                 "--device", "cuda"])
    assert result.exit_code == 2


def test_compile_gives_the_same_probabilities(tiny_timm_dir: Path) -> None:
    try:
        acceleration.check_compile_works(torch.device("cpu"))
    except UsageError as exc:  # no C++ compiler here: the next test covers that path
        pytest.skip(exc.message)

    def classify(*extra: str) -> list[dict]:  # one batch: one compilation
        result = runner.invoke(app, ["classify", *PATHS, "--model", str(tiny_timm_dir), "-k", "5", "-b", "6",
                                     "--workers", "0", *extra])
        assert result.exit_code == 0, result.stderr
        return parse_jsonl(result.stdout)

    for eager, compiled in zip(classify(), classify("--compile"), strict=True):
        assert [p["class_id"] for p in compiled["predictions"]] == [p["class_id"] for p in eager["predictions"]]
        np.testing.assert_allclose([p["score"] for p in compiled["predictions"]],
                                   [p["score"] for p in eager["predictions"]], rtol=1e-4, atol=1e-6)


def test_a_broken_compiler_is_a_clear_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_compile(*args: object, **kwargs: object) -> object:
        return lambda x: (_ for _ in ()).throw(RuntimeError("InvalidCxxCompiler: no working C++ compiler found"))

    monkeypatch.setattr(acceleration, "_compile_checked", set())
    monkeypatch.setattr(torch, "compile", failing_compile)
    with pytest.raises(UsageError, match="--compile cannot work") as raised:
        acceleration.check_compile_works(torch.device("cpu"))
    assert "C++ compiler" in (raised.value.hint or "")


@pytest.mark.parametrize("capability", [CLASSIFY, LABEL])
def test_uint8_pixels_normalised_later_equal_the_full_transform(capability: str, tiny_timm_dir: Path,
                                                                tiny_open_clip_dir: Path) -> None:
    """Bit for bit: the same float32 operations in the same order, only on the other side of the IPC."""
    model_dir = tiny_timm_dir if capability == CLASSIFY else tiny_open_clip_dir
    transform = load_model(resolve(str(model_dir), capability), capability, "cpu", "fp32").assets.transform
    pixels, normalize = split_normalize(transform)
    assert isinstance(normalize, DeviceNormalize)
    wide = Image.new("RGB", (900, 100), (10, 200, 30))  # beyond the aspect guard's ratio
    for image in [decode_image(p).image for p in PATHS[:3]] + [wide]:
        shipped = pixels(image)
        assert shipped.dtype == torch.uint8
        assert torch.equal(normalize(shipped[None])[0], transform(image))


def test_transforms_without_a_normalise_tail_are_left_alone() -> None:
    def custom(image: object) -> torch.Tensor:
        return torch.zeros(3, 4, 4)

    assert split_normalize(custom) == (custom, None)


def test_threads_follow_omp_num_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    monkeypatch.setattr(acceleration, "_threads_configured", False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    try:
        acceleration.configure_threads()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert acceleration.available_cores() >= 1


def test_channels_last_only_for_convolutional_backbones_on_cuda(tiny_timm_dir: Path, tiny_detr_dir: Path) -> None:
    from vitkit.models.acceleration import prefers_channels_last
    from vitkit.models.registry import DETECT

    detr = load_model(resolve(str(tiny_detr_dir), DETECT), DETECT, "cpu", "fp32").module
    vit = load_model(resolve(str(tiny_timm_dir), CLASSIFY), CLASSIFY, "cpu", "fp32").module
    assert prefers_channels_last(detr, torch.device("cuda"))
    assert not prefers_channels_last(vit, torch.device("cuda"))
    assert not prefers_channels_last(detr, torch.device("cpu"))


def test_compare_probabilities_reports_agreement_and_largest_difference() -> None:
    fp32 = np.array([[0.7, 0.2, 0.1], [0.4, 0.5, 0.1]])
    bf16 = np.array([[0.69, 0.21, 0.1], [0.5, 0.4, 0.1]])
    agreement = compare_probabilities(fp32, torch.tensor(bf16))
    assert agreement.top1_agreement == 0.5
    assert agreement.max_abs_prob_diff == pytest.approx(0.1)
    with pytest.raises(UsageError):
        compare_probabilities(fp32, bf16[:1])
