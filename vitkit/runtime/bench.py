"""Throughput of a model on this machine: the model alone, and the whole path from JPEG files to records.

Both numbers come from the same loaded model, batch size, device and precision in one call, so their
ratio says how much of the model's speed the data path (decode, resize, collate, transfer) keeps.
The images are generated JPEGs in a temporary folder, decoded by the real dataloader and runner.
One pass varies a lot on a shared machine (26, 11.8 and 57.9 img/s in three runs), so each number is
the median of `repeats` passes after a warm-up, reported with its spread (min-max).
"""

from __future__ import annotations

import math
import os
import re
import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageChops

from vitkit.inputs.data import ImageMeta
from vitkit.inputs.decode import DecodeOptions, decode_image
from vitkit.inputs.discover import InputItem
from vitkit.errors import InputError, UsageError
from vitkit.models.loading import LoadedModel, load_model
from vitkit.models.registry import CLASSIFY, EMBED, ModelSpec, get_default_model, resolve_any
from vitkit.runtime.report import Reporter
from vitkit.runtime.runner import RunOptions, forward_batch, run

BENCH_CAPABILITIES = (CLASSIFY, EMBED)  # tasks whose forward is one image batch in, one tensor out
COLUMNS = ("model", "task", "device", "precision", "batch_size", "images", "image_size",
           "model_only_img_s", "end_to_end_img_s", "end_to_end_vs_model_only",
           "repeats", "model_only_min", "model_only_max", "end_to_end_min", "end_to_end_max")


@dataclass(frozen=True)
class BenchOptions:
    model: str | None = None  # None: the classify default
    device: str = "auto"
    precision: str = "auto"
    batch_size: int | None = None  # None: 16, or 64 on a GPU (the commands' default)
    images: int = 64
    size: tuple[int, int] = (1920, 1080)  # (width, height) of the generated JPEGs
    run: RunOptions | None = None  # workers, draft, max pixels; batch size comes from batch_size
    offline: bool = False
    compile: bool = False
    seed: int = 0
    repeats: int = 3  # timed passes of each kind, after the warm-up; the median is reported


@dataclass(frozen=True)
class Rates:
    """Images per second of several identical passes."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, rates: Sequence[float]) -> "Rates":
        if not rates:
            raise ValueError("no timed passes")
        return cls(statistics.median(rates), min(rates), max(rates))


@dataclass(frozen=True)
class BenchResult:
    model: str
    task: str
    device: str
    precision: str
    batch_size: int
    images: int
    image_size: str
    model_only: Rates
    end_to_end: Rates
    repeats: int

    @property
    def model_only_img_s(self) -> float:
        return self.model_only.median

    @property
    def end_to_end_img_s(self) -> float:
        return self.end_to_end.median

    @property
    def ratio(self) -> float:
        return self.end_to_end_img_s / self.model_only_img_s

    def to_row(self) -> dict[str, Any]:
        return {"model": self.model, "task": self.task, "device": self.device, "precision": self.precision,
                "batch_size": self.batch_size, "images": self.images, "image_size": self.image_size,
                "model_only_img_s": round(self.model_only_img_s, 2), "end_to_end_img_s": round(self.end_to_end_img_s, 2),
                "end_to_end_vs_model_only": round(self.ratio, 3), "repeats": self.repeats,
                "model_only_min": round(self.model_only.low, 2), "model_only_max": round(self.model_only.high, 2),
                "end_to_end_min": round(self.end_to_end.low, 2), "end_to_end_max": round(self.end_to_end.high, 2)}

    def summary(self) -> str:
        """For people: the medians with their spread, in lines that fit 80 columns."""
        def rate(r: Rates) -> str:
            return f"{r.median:9.1f} img/s  (min-max {r.low:.1f}-{r.high:.1f})"

        return (f"model       {self.model} ({self.task}) on {self.device}, {self.precision}, batch {self.batch_size}\n"
                f"images      {self.images} JPEGs of {self.image_size}; median of {self.repeats} passes after a warm-up\n"
                f"model only  {rate(self.model_only)}\n"
                f"end to end  {rate(self.end_to_end)}, {self.ratio:.2f} of model only\n")


def parse_size(text: str) -> tuple[int, int]:
    """'1920x1080' -> (1920, 1080)."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", text)
    if not match or min(int(match[1]), int(match[2])) < 1:
        raise UsageError(f"--size must be WIDTHxHEIGHT in pixels, not {text!r}", hint="e.g. --size 1920x1080")
    return int(match[1]), int(match[2])


def resolve_bench_model(reference: str | None) -> tuple[ModelSpec, str]:
    """The spec and which of its capabilities to time: classify if it can, else embed (open_clip)."""
    spec = resolve_any(reference or get_default_model(CLASSIFY), CLASSIFY)
    for capability in BENCH_CAPABILITIES:
        if capability in spec.capabilities:
            return spec, capability
    raise UsageError(f"model {spec.id!r} can neither classify nor embed images, which is what `bench` times",
                     hint="pass a timm classifier or an open_clip CLIP model")


def build_bench_task(loaded: LoadedModel, capability: str) -> Any:
    if capability == CLASSIFY:
        from vitkit.tasks.classify import ClassifyTask

        return ClassifyTask(loaded, top_k=5)
    from vitkit.tasks.embed import ImageEmbedTask

    return ImageEmbedTask(loaded)  # embed's own task: any open_clip model (timm ones classify), unit vectors


def run_bench(options: BenchOptions, reporter: Reporter | None = None) -> BenchResult:
    """Load the model, generate the images, then time the model alone and the full path."""
    reporter = reporter or Reporter(quiet=True)
    if options.images < 1 or (options.batch_size is not None and options.batch_size < 1):
        raise UsageError("--images and --batch-size must be at least 1")
    if options.repeats < 1:
        raise UsageError(f"--repeats must be at least 1, not {options.repeats}")
    spec, capability = resolve_bench_model(options.model)
    loaded = load_model(spec, capability, options.device, options.precision, options.offline, compile=options.compile)
    task = build_bench_task(loaded, capability)
    batch_size = RunOptions(options.batch_size).batch_size_for(loaded.device)
    run_options = replace(options.run or RunOptions(), batch_size=batch_size)
    width, height = options.size
    with tempfile.TemporaryDirectory(prefix="vitkit-bench-") as folder:
        reporter.message(f"generating {options.images} JPEGs of {width}x{height}")
        paths = write_synthetic_jpegs(folder, options.images, options.size, options.seed)
        sample = preprocess_one(task, paths[0], run_options.draft)
        reporter.message("timing the model alone")
        model_only = time_model_only(task, sample, batch_size, options.images, options.repeats)
        reporter.message("timing end to end (decode, preprocess, model, records)")
        end_to_end = time_end_to_end(task, [InputItem(p) for p in paths], run_options, options.repeats)
    return BenchResult(spec.id, capability, str(loaded.device), loaded.precision, batch_size,
                       options.images, f"{width}x{height}", Rates.of(model_only), Rates.of(end_to_end),
                       options.repeats)


def write_synthetic_jpegs(folder: str, count: int, size: tuple[int, int], seed: int = 0) -> list[str]:
    """`count` photo-like JPEGs: flat or pure-noise images would decode unrealistically fast or slow."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = os.path.join(folder, f"bench{i:05d}.jpg")
        synthetic_photo(size, rng).save(path, "JPEG", quality=90)
        paths.append(path)
    return paths


def synthetic_photo(size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """Smooth colour gradients and blotches (built small, upscaled) plus sensor-like grain."""
    width, height = size
    h, w = max(2, height // 16), max(2, width // 16)
    y, x = np.linspace(0, 1, h)[:, None], np.linspace(0, 1, w)[None, :]
    gradient = np.stack([c0 + c1 * x + c2 * y for c0, c1, c2 in rng.uniform(-80, 160, (3, 3))], -1)
    blotches = np.asarray(Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC))
    small = Image.fromarray(np.clip(0.6 * gradient + 0.4 * blotches, 0, 255).astype(np.uint8))
    grain = Image.merge("RGB", [Image.effect_noise((width, height), 8) for _ in range(3)])  # centred on 128
    return ImageChops.add(small.resize((width, height), Image.BICUBIC), grain, 1.0, -128)


def preprocess_one(task: Any, path: str, draft: bool) -> torch.Tensor:
    """One image as the model sees it, (3, H, W): the model-only timing feeds real input shapes."""
    decoded = decode_image(path, DecodeOptions(task.draft_size if draft else None))
    return task.preprocess(decoded.image, ImageMeta(path, decoded.width, decoded.height))


def time_model_only(task: Any, sample: torch.Tensor, batch_size: int, images: int, repeats: int = 1) -> list[float]:
    """Images per second through the task's forward alone, on normalised inputs already on the device,
    one rate per timed pass."""
    model = task.model
    batch = sample.unsqueeze(0).expand(batch_size, *sample.shape).contiguous().to(model.device)  # (B, 3, H, W)
    n_batches = max(1, math.ceil(images / batch_size))

    def forward_all(count: int) -> None:
        for _ in range(count):
            forward_batch(task, batch, model.dtype)  # the runner's own forward: inference mode, autocast
        synchronize(model.device)

    forward_all(2)  # warm-up: kernel selection, allocator growth, lazy compilation
    return [n_batches * batch_size / timed(lambda: forward_all(n_batches)) for _ in range(repeats)]


def time_end_to_end(task: Any, items: Sequence[InputItem], options: RunOptions, repeats: int = 1) -> list[float]:
    """Images per second from files to records through the real runner, one rate per timed pass; a
    warm-up pass on one batch first."""
    consume(run(task, items[: options.batch_size], options))
    return [len(items) / timed(lambda: consume(run(task, items, options))) for _ in range(repeats)]


def consume(records: Any) -> None:
    for record in records:
        if not record.ok:
            # A failed synthetic image would make the throughput meaningless, so it voids the run.
            raise InputError(f"benchmark image {record.path} failed: {record.error}",
                             hint="check the temporary folder has space")


def timed(fn: Callable[[], None]) -> float:
    began = time.perf_counter()
    fn()
    return max(time.perf_counter() - began, 1e-9)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
