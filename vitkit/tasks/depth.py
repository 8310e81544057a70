"""Monocular depth with a transformers depth model (Depth Anything, DPT) and its own processor: a map
at the displayed size per image, written as a 16-bit PNG (and optionally a float32 .npy) with a
viridis preview. What the values mean (relative or metric) comes from the checkpoint's config."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from vitkit.errors import InputError, UsageError
from vitkit.inputs.data import ImagePreprocess, Sample
from vitkit.models.backends.hf import HfAssets, ProcessorPreprocess, processor_short_side
from vitkit.models.backends.hf_depth import (RELATIVE, PadToLargest, forward_by_size, is_depth_model,
                                             post_process_depth, read_depth_kind)
from vitkit.models.loading import LoadedModel
from vitkit.outputs import depth_maps
from vitkit.outputs.artifacts import Artifacts, ImageFile
from vitkit.outputs.files import OutputPlanner
from vitkit.outputs.records import RecordLayout, flat_rows
from vitkit.tasks.base import TaskResult

_CSV_COLUMNS = ("path", "width", "height", "depth", "preview", "npy", "kind", "unit", "min", "max", "scale", "offset",
                "error")


def _describe(record: dict[str, Any]) -> str:
    unit = " m" if record.get("kind") == "metric" else ""
    return f"{record.get('kind')} {record.get('min', 0):.3g}–{record.get('max', 0):.3g}{unit} → {record.get('depth')}"


DEPTH_LAYOUT = RecordLayout(
    csv_columns=_CSV_COLUMNS,
    csv_rows=flat_rows(_CSV_COLUMNS),
    describe=_describe,
)


@dataclass(frozen=True)
class DepthOptions:
    out_dir: str | None
    npy: bool = False  # also write the float32 map as .npy

    def __post_init__(self) -> None:
        if not self.out_dir:
            raise UsageError("depth writes maps: --out-dir is required", hint="e.g. --out-dir depth/")


class DepthTask:
    layout = DEPTH_LAYOUT

    def __init__(self, model: LoadedModel, options: DepthOptions, inputs: Sequence[str] = ()) -> None:
        if not isinstance(model.assets, HfAssets) or not is_depth_model(model.module):
            raise UsageError(f"model {model.spec.id!r} is not a transformers depth model",
                             hint="pick one from `vitkit models list --task depth`, e.g. --model depth-anything-s")
        self.model = model
        self.options = options
        self.image_processor = model.assets.image_processor
        self.depth_kind = read_depth_kind(model.module.config, model.spec.id)
        self.preprocess = ImagePreprocess(ProcessorPreprocess(self.image_processor))
        self.collate_inputs = PadToLargest()
        self.draft_size = processor_short_side(self.image_processor)
        self.planner = OutputPlanner(options.out_dir or "", inputs)

    def forward(self, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        return forward_by_size(self.model.module, inputs)

    def postprocess(self, predicted: list[torch.Tensor], samples: Sequence[Sample]) -> list[TaskResult]:
        results: list[TaskResult] = []
        for depth, sample in zip(predicted, samples, strict=True):
            size = (sample.height or 0, sample.width or 0)  # displayed (EXIF-oriented) full size
            full = post_process_depth(self.image_processor, depth, size).cpu().numpy()  # (H, W) float32
            results.append(self._fields(full, sample))
        return results

    def _fields(self, depth: np.ndarray, sample: Sample) -> TaskResult:
        value_range = depth_maps.value_range(depth)
        if value_range is None:
            return InputError("the model's depth map is not finite, even in fp32", kind="non-finite output")
        low, high = value_range
        quantised = depth_maps.quantise(depth, low, high)
        fields: dict[str, Any] = {"depth": None, "preview": None, "kind": self.depth_kind.kind,
                                  "unit": self.depth_kind.unit, "min": low, "max": high,
                                  "scale": quantised.scale, "offset": quantised.offset}
        if self.options.npy:
            fields["npy"] = None
        # What waits for the output stage is the 16-bit levels (half the float map), and the float map
        # only when it is to be written: up to two batches of maps wait, 12 MP each.
        exact = depth if self.options.npy else None
        return Artifacts(fields, functools.partial(self._files, sample.path, quantised, exact, low, high))

    def _files(self, path: str, quantised: depth_maps.Quantised, exact: np.ndarray | None, low: float,
               high: float) -> list[ImageFile]:
        """The 16-bit PNG, the preview (and the .npy). Runs in the output stage; all are written or none."""
        nearer_is_larger = self.depth_kind.kind == RELATIVE
        files = [
            ImageFile("depth", self.planner.path_for(path, "depth", "png"), depth_maps.levels_image(quantised.levels),
                      {"format": "PNG"}),
            ImageFile("preview", self.planner.path_for(path, "depth.preview", "png"),
                      depth_maps.preview_image(quantised.levels, nearer_is_larger, low, high, self.depth_kind.unit),
                      {"format": "PNG", "compress_level": 1}),  # for looking at: fast to write
        ]
        if exact is not None:
            files.append(ImageFile("npy", self.planner.path_for(path, "depth", "npy"), NpyArray(exact), {}))
        return files


@dataclass(frozen=True)
class NpyArray:
    """An array where ImageFile wants an image: Pillow's `save(fp, **options)`, in NumPy's .npy format."""

    array: np.ndarray

    def save(self, fp: Any, **options: Any) -> None:
        np.save(fp, self.array, allow_pickle=False)
