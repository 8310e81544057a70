"""The runner's GPU recoveries, exercised on CPU: CUDA out-of-memory back-off and the fp32 rerun of
non-finite outputs. Real models, loader and dataloader; only the task's forward is wrapped by a test
double that raises torch.OutOfMemoryError or returns NaNs."""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import BROKEN_SAMPLES, GOOD_SAMPLES, SAMPLE_DATA, SAMPLE_ERRORS
from vitkit.inputs.discover import InputItem
from vitkit.models.loading import load_model
from vitkit.models.registry import CLASSIFY, DETECT, resolve
from vitkit.runtime.report import Reporter
from vitkit.runtime.runner import OUT_OF_MEMORY, RunOptions, has_non_finite, run
from vitkit.tasks.classify import ClassifyTask
from vitkit.tasks.detect import DetectTask

OPTIONS = RunOptions(batch_size=4, workers=0)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> list[InputItem]:
    """Good photos with a broken file among them: 7 inputs, batches of 4 with 3 + 3 images to run."""
    folder = tmp_path_factory.mktemp("resilience")
    sources = [SAMPLE_DATA / name for name in GOOD_SAMPLES] + [SAMPLE_ERRORS / BROKEN_SAMPLES[0]]
    order = [sources[0], sources[-1], *sources[1:-1]]
    paths = []
    for i, source in enumerate(order):
        target = folder / f"{i:02d}_{source.name}"
        shutil.copy(source, target)
        paths.append(InputItem(str(target)))
    return paths


def classify_task(model_dir: Path, precision: str = "fp32") -> ClassifyTask:
    return ClassifyTask(load_model(resolve(str(model_dir), CLASSIFY), CLASSIFY, "cpu", precision), top_k=5)


def wrap_forward(monkeypatch: pytest.MonkeyPatch, task: Any, double: Callable[[Callable, Any], Any]) -> list[int]:
    """Replace task.forward by double(original_forward, inputs); returns the batch sizes it was called with."""
    original, sizes = task.forward, []

    def forward(inputs: Any) -> Any:
        sizes.append(len(inputs["pixel_values"] if isinstance(inputs, dict) else inputs))
        return double(original, inputs)

    monkeypatch.setattr(task, "forward", forward)
    return sizes


def records_of(task: Any, items: list[InputItem], stream: io.StringIO | None = None) -> list[dict]:
    reporter = Reporter(stream=stream or io.StringIO(), progress=False)
    return [record.to_dict() for record in run(task, items, OPTIONS, reporter)]


def assert_same_records(got: list[dict], expected: list[dict]) -> None:
    """Same paths in the same order, same classes; scores equal up to float noise from batch shape."""
    assert [r["path"] for r in got] == [r["path"] for r in expected]
    for a, b in zip(got, expected, strict=True):
        assert a.keys() == b.keys()
        if "predictions" in b:
            assert [p["class_id"] for p in a["predictions"]] == [p["class_id"] for p in b["predictions"]]
            np.testing.assert_allclose([p["score"] for p in a["predictions"]], [p["score"] for p in b["predictions"]],
                                       rtol=1e-5, atol=1e-7)
        else:
            assert a == b


def out_of_memory_above(limit: int) -> Callable[[Callable, Any], Any]:
    def double(original: Callable, images: Any) -> Any:
        if len(images) > limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory (test double: batch of {len(images)} > {limit})")
        return original(images)

    return double


def test_out_of_memory_halves_the_batch_and_keeps_every_record_in_order(
        tiny_timm_dir: Path, inputs: list[InputItem], monkeypatch: pytest.MonkeyPatch) -> None:
    task = classify_task(tiny_timm_dir)
    clean = records_of(task, inputs)
    sizes = wrap_forward(monkeypatch, task, out_of_memory_above(2))
    stderr = io.StringIO()
    assert_same_records(records_of(task, inputs, stderr), clean)
    # Batch 1 (3 images) fails, then its halves run; batch 2 starts at the size that fitted.
    assert sizes == [3, 2, 1, 2, 1]
    assert stderr.getvalue().count("out of GPU memory") == 1


def test_an_image_that_does_not_fit_alone_becomes_its_own_error_record(
        tiny_timm_dir: Path, inputs: list[InputItem], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A flat grey image stands for one too big for the GPU: any batch holding it runs out of memory."""
    grey = tmp_path / "huge.png"
    Image.new("RGB", (300, 200), (128, 128, 128)).save(grey)
    items = [*inputs[:3], InputItem(str(grey)), *inputs[3:]]
    task = classify_task(tiny_timm_dir)
    clean = records_of(task, items)

    def double(original: Callable, images: torch.Tensor) -> Any:
        if bool((images.flatten(2).std(dim=2) < 1e-6).all(dim=1).any()):  # (B, C) per-channel spread
            raise torch.OutOfMemoryError("CUDA out of memory (test double)")
        return original(images)

    wrap_forward(monkeypatch, task, double)
    got = records_of(task, items)
    assert got[3] == {"path": str(grey), "error": OUT_OF_MEMORY}
    assert_same_records(got[:3] + got[4:], clean[:3] + clean[4:])


def test_detection_padded_batches_split_along_the_batch(tiny_detr_dir: Path, inputs: list[InputItem],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Dict inputs from a custom collate (pixel_values + pixel_mask, padded) split into halves too."""
    task = DetectTask(load_model(resolve(str(tiny_detr_dir), DETECT), DETECT, "cpu", "fp32"))
    clean = records_of(task, inputs)

    def double(original: Callable, batch: dict[str, torch.Tensor]) -> Any:
        if len(batch["pixel_values"]) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (test double)")
        return original(batch)

    wrap_forward(monkeypatch, task, double)
    got = records_of(task, inputs)
    assert [r["path"] for r in got] == [r["path"] for r in clean]
    for a, b in zip(got, clean, strict=True):
        assert [d["class_id"] for d in a.get("detections", [])] == [d["class_id"] for d in b.get("detections", [])]
        for da, db in zip(a.get("detections", []), b.get("detections", [])):
            np.testing.assert_allclose(da["box"], db["box"], atol=1e-3)


def nan_under_autocast(original: Callable, images: torch.Tensor) -> torch.Tensor:
    """What an fp16 overflow looks like: reduced precision gives NaNs, fp32 does not."""
    outputs = original(images)
    return torch.full_like(outputs, float("nan")) if torch.is_autocast_enabled("cpu") else outputs


def test_non_finite_reduced_precision_batches_rerun_in_fp32(tiny_timm_dir: Path, inputs: list[InputItem],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    fp32 = records_of(classify_task(tiny_timm_dir, "fp32"), inputs)
    task = classify_task(tiny_timm_dir, "bf16")
    sizes = wrap_forward(monkeypatch, task, nan_under_autocast)
    stderr = io.StringIO()
    got = records_of(task, inputs, stderr)
    assert_same_records(got, fp32)
    assert all(np.isfinite(p["score"]) for r in got if "predictions" in r for p in r["predictions"])
    assert sizes == [3, 3, 3, 3]  # each batch: bf16, then its fp32 rerun
    assert stderr.getvalue().count("non-finite") == 1


def test_only_the_non_finite_batch_is_rerun(tiny_timm_dir: Path, inputs: list[InputItem],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    task = classify_task(tiny_timm_dir, "bf16")
    clean = records_of(task, inputs)
    calls = []

    def first_call_nan(original: Callable, images: torch.Tensor) -> torch.Tensor:
        calls.append(torch.is_autocast_enabled("cpu"))
        outputs = original(images)
        return torch.full_like(outputs, float("nan")) if len(calls) == 1 else outputs

    wrap_forward(monkeypatch, task, first_call_nan)
    got = records_of(task, inputs)
    assert calls == [True, False, True]  # batch 1 in bf16, its fp32 rerun, batch 2 in bf16
    assert [r["path"] for r in got] == [r["path"] for r in clean]
    assert all(np.isfinite(p["score"]) for r in got if "predictions" in r for p in r["predictions"])


@pytest.mark.parametrize(("outputs", "expected"), [
    (torch.ones(2), False),
    (torch.tensor([1.0, float("inf")]), True),
    (torch.tensor([1, 2]), False),
    ({"logits": torch.ones(1), "boxes": torch.tensor([float("nan")])}, True),
    ([[1, 2], [3]], False),
    ((torch.ones(1), [torch.tensor([float("-inf")])]), True),
])
def test_non_finite_outputs_are_found_in_any_structure(outputs: Any, expected: bool) -> None:
    assert has_non_finite(outputs) is expected


def test_default_batch_size_grows_on_a_gpu_and_an_explicit_one_is_kept() -> None:
    # The device objects only name a device type; nothing is allocated, so this runs without a GPU.
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    detect_default = RunOptions(default_batch_size=4)
    assert (detect_default.batch_size_for(cpu), detect_default.batch_size_for(cuda)) == (4, 16)
    explicit = RunOptions(batch_size=3, default_batch_size=4)
    assert (explicit.batch_size_for(cpu), explicit.batch_size_for(cuda)) == (3, 3)


def test_batches_grow_back_after_a_stretch_without_out_of_memory(
        tiny_timm_dir: Path, inputs: list[InputItem], monkeypatch: pytest.MonkeyPatch) -> None:
    """One out-of-memory batch (a huge padded image, say) must not keep a long run at small batches."""
    from vitkit.runtime.runner import REGROW_AFTER_BATCHES

    good = [item for item in inputs if BROKEN_SAMPLES[0] not in item.path]
    items = good * 8  # 48 inputs: 12 batches of 4
    task = classify_task(tiny_timm_dir)
    clean = records_of(task, items)
    failed_once: list[bool] = []

    def out_of_memory_once(original: Callable, images: Any) -> Any:
        if not failed_once and len(images) > 2:
            failed_once.append(True)
            raise torch.OutOfMemoryError("CUDA out of memory (test double: first big batch only)")
        return original(images)

    sizes = wrap_forward(monkeypatch, task, out_of_memory_once)
    assert_same_records(records_of(task, items), clean)
    # The failed batch runs in halves, the next REGROW_AFTER_BATCHES at the reduced size, the rest at 4 again.
    assert sizes == [4, 2, 2] + [2, 2] * REGROW_AFTER_BATCHES + [4] * (11 - REGROW_AFTER_BATCHES)


# --- inpaint: the model runs in forward, so both recoveries cover it too ------------------------------

def inpaint_task(model_dir: Path, out_dir: Path, precision: str = "fp32") -> Any:
    from vitkit.models.registry import INPAINT
    from vitkit.tasks.inpaint import InpaintOptions, InpaintTask

    loaded = load_model(resolve(str(model_dir), INPAINT), INPAINT, "cpu", precision)
    return InpaintTask(loaded, InpaintOptions(out_dir=str(out_dir), grid=True))


def written_files(records: list[dict]) -> dict[str, bytes]:
    return {r[key]: Path(r[key]).read_bytes() for r in records for key in ("output", "grid") if key in r}


def test_out_of_memory_on_inpaint_gives_the_clean_runs_records_and_files(
        tiny_transformers_mae_normpix_dir: Path, inputs: list[InputItem], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    task = inpaint_task(tiny_transformers_mae_normpix_dir, tmp_path)
    clean = records_of(task, inputs)
    clean_files = written_files(clean)
    assert len(clean_files) == 2 * 6  # six good photos, a composite and a grid each

    def double(original: Callable, batch: dict[str, torch.Tensor]) -> Any:
        if len(batch["pixel_values"]) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (test double)")
        return original(batch)

    sizes = wrap_forward(monkeypatch, task, double)
    stderr = io.StringIO()
    got = records_of(task, inputs, stderr)
    assert got == clean
    assert written_files(got) == clean_files
    assert sizes == [3, 2, 1, 1, 1] + [1, 1, 1]  # batch 1 down to single images; batch 2 at the size that fitted
    assert stderr.getvalue().count("out of GPU memory") == 1


def test_non_finite_inpaint_batches_rerun_in_fp32(tiny_transformers_mae_normpix_dir: Path, inputs: list[InputItem],
                                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    fp32 = records_of(inpaint_task(tiny_transformers_mae_normpix_dir, tmp_path / "fp32"), inputs)
    task = inpaint_task(tiny_transformers_mae_normpix_dir, tmp_path / "bf16", "bf16")

    def nan_logits_under_autocast(original: Callable, batch: dict[str, torch.Tensor]) -> Any:
        outputs = original(batch)
        if not torch.is_autocast_enabled("cpu"):
            return outputs
        return dataclasses.replace(outputs, logits=torch.full_like(outputs.logits, float("nan")))

    sizes = wrap_forward(monkeypatch, task, nan_logits_under_autocast)
    stderr = io.StringIO()
    got = records_of(task, inputs, stderr)
    assert sizes == [3, 3, 3, 3]  # each batch: bf16, then its fp32 rerun
    assert stderr.getvalue().count("non-finite") == 1
    assert [r["path"] for r in got] == [r["path"] for r in fp32]
    for a, b in zip(got, fp32, strict=True):
        assert a.keys() == b.keys()
        if "output" in b:  # the fp32 rerun made exactly the fp32 run's pixels
            assert a["masked_fraction"] == b["masked_fraction"]
            assert np.array_equal(np.asarray(Image.open(a["output"])), np.asarray(Image.open(b["output"])))
