"""The class token's self-attention of a timm ViT (DINO's figure): per head and averaged in the last
block, or rolled out through every block, drawn over the part of each image the model saw.

The weights come from the blocks' own q/k (vitkit/models/backends/timm_attention.py); the overlays
and per-head sheets are drawn in the output stage (vitkit/outputs/heatmaps.py).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import default_collate

from vitkit.errors import ModelTaskMismatchError, UsageError
from vitkit.inputs.data import ImagePreprocess, Sample
from vitkit.inputs.decode import DEFAULT_MAX_PIXELS, DecodeOptions, decode_image
from vitkit.models.backends.timm_ import TimmAssets
from vitkit.models.backends.timm_attention import VitLayout, capture_attention, seen_region, vit_layout
from vitkit.models.loading import LoadedModel
from vitkit.outputs import heatmaps
from vitkit.outputs.artifacts import Artifacts, ImageFile
from vitkit.outputs.files import OutputPlanner
from vitkit.outputs.records import RecordLayout, flat_rows
from vitkit.tasks.base import TaskResult

_CSV_COLUMNS = ("path", "width", "height", "output", "heads", "entropy", "mask_area", "mask_box", "error")


def _describe(record: dict[str, Any]) -> str:
    text = f"entropy {record.get('entropy', 0.0):.2f} nats"
    if record.get("mask_area") is not None:
        pixels = max(1, (record.get("width") or 0) * (record.get("height") or 0))
        text += f", mask {record['mask_area'] / pixels:.0%} of the image"
    return text + (f" → {record['output']}" if record.get("output") else "")


ATTENTION_LAYOUT = RecordLayout(
    csv_columns=_CSV_COLUMNS,
    csv_rows=flat_rows(_CSV_COLUMNS),
    describe=_describe,
)


@dataclass(frozen=True)
class AttentionOptions:
    out_dir: str | None = None  # overlays (and sheets) are written here when set
    alpha: float = 0.6  # heat-map opacity in overlays
    heads: bool = False  # also a sheet with one panel per head
    keep_mass: float | None = None  # the DINO mask: the fewest patches holding this share of the attention
    rollout: bool = False  # attention rollout through all blocks instead of the last block's
    max_pixels: int = DEFAULT_MAX_PIXELS  # for decoding the originals again to draw on

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise UsageError(f"--alpha must be between 0 and 1, not {self.alpha}")
        if self.keep_mass is not None and not (math.isfinite(self.keep_mass) and 0.0 < self.keep_mass <= 1.0):
            raise UsageError(f"--keep-mass must be above 0 and at most 1, not {self.keep_mass}",
                             hint="the DINO paper keeps 0.6 of the attention mass")
        if self.heads and not self.out_dir:
            raise UsageError("--heads writes a sheet per image: it needs --out-dir", hint="add --out-dir DIR")
        if self.heads and self.rollout:
            raise UsageError("--rollout averages the heads in every block: it has no per-head maps",
                             hint="drop --heads, or --rollout for the last block's heads")


@dataclass(frozen=True)
class AttentionOutputs:
    heads: torch.Tensor  # (B, heads, N): the class token's attention over all tokens in the last block
    rollout: torch.Tensor | None  # (B, N): the class token's row of the rollout
    grid: tuple[int, int]  # (gh, gw) patches of this batch's input size


@dataclass(frozen=True)
class ImageMaps:
    """One image's maps over its patch grid (prefix tokens dropped)."""

    heads: np.ndarray  # (heads, gh, gw) float32, each head's raw softmax weights
    shown: np.ndarray  # (gh, gw) float32: the mean over heads, or the rollout
    region: heatmaps.Region


class AttentionTask:
    layout = ATTENTION_LAYOUT

    def __init__(self, model: LoadedModel, options: AttentionOptions = AttentionOptions(),
                 inputs: Sequence[str] = ()) -> None:
        if not isinstance(model.assets, TimmAssets):
            raise ModelTaskMismatchError(f"model {model.spec.id!r} is not a timm vision transformer",
                                         hint="e.g. --model dino-s16, dinov2-s14 or vit-s16")
        self.model = model
        self.options = options
        self.vit: VitLayout = vit_layout(model.module, model.spec.id)
        self.transform = model.assets.transform
        seen_region(self.transform, 4, 3)  # a transform whose geometry is unknown fails here, not per image
        # the model's own eval transform (aspect-capped); where it looked is worked out from each image's size
        self.preprocess = ImagePreprocess(self.transform)
        self.collate_inputs = default_collate
        self.draft_size = model.draft_size
        self.planner = OutputPlanner(options.out_dir, inputs) if options.out_dir else None

    def forward(self, pixels: torch.Tensor) -> AttentionOutputs:  # (B, 3, H, W)
        with capture_attention(self.vit, self.options.rollout) as captured:
            self.model.module.forward_features(pixels)
        rollout = captured.rollout[:, 0] if captured.rollout is not None else None
        grid = (pixels.shape[-2] // self.vit.patch_size[0], pixels.shape[-1] // self.vit.patch_size[1])
        return AttentionOutputs(captured.last, rollout, grid)

    def maps(self, outputs: AttentionOutputs, samples: Sequence[Sample]) -> list[ImageMaps]:
        """`forward`'s outputs -> each image's maps on its patch grid, and the region of the displayed
        image (full size, upright) that grid covers. A draft-reduced decode has the same proportions
        to within a pixel of the reduced image, so the region is computed from the full size."""
        prefix, (grid_h, grid_w) = self.vit.num_prefix_tokens, outputs.grid
        heads = outputs.heads[:, :, prefix:].float().cpu()  # (B, heads, P)
        if heads.shape[-1] != grid_h * grid_w:
            raise ModelTaskMismatchError(f"model {self.model.spec.id!r} has {heads.shape[-1]} patch tokens, not the "
                                         f"{grid_h} x {grid_w} its input size makes", hint="use a plain timm ViT")
        shown = heads.mean(dim=1) if outputs.rollout is None else outputs.rollout[:, prefix:].float().cpu()
        return [ImageMaps(h.reshape(-1, grid_h, grid_w).numpy(), s.reshape(grid_h, grid_w).numpy(),
                          seen_region(self.transform, sample.width or 1, sample.height or 1))
                for h, s, sample in zip(heads, shown, samples)]

    def postprocess(self, outputs: AttentionOutputs, samples: Sequence[Sample]) -> list[TaskResult]:
        return [self._fields(maps, sample) for maps, sample in zip(self.maps(outputs, samples), samples)]

    def _fields(self, maps: ImageMaps, sample: Sample) -> TaskResult:
        fields: dict[str, Any] = {"output": None, "heads": None, "entropy": entropy(maps.shown)}
        mask = None
        if self.options.keep_mass is not None:
            mask = keep_mass_mask(maps.shown, self.options.keep_mass)
            area, box = heatmaps.mask_extent(mask, maps.region, sample.width or 0, sample.height or 0)
            fields.update(mask_area=area, mask_box=box)
        if self.planner is None:
            return fields
        return Artifacts(fields, functools.partial(self._files, self.planner, sample.path, maps, mask))

    def _files(self, planner: OutputPlanner, path: str, maps: ImageMaps, mask: np.ndarray | None) -> list[ImageFile]:
        """The overlay at the original's full size (and the per-head sheet). Runs in the output stage."""
        original = decode_image(path, DecodeOptions(max_pixels=self.options.max_pixels)).image
        overlay = heatmaps.heat_overlay(original, maps.shown, maps.region, self.options.alpha, mask)
        # for looking at: fast compression
        files = [ImageFile("output", planner.path_for(path, "attention", "png"), overlay,
                           {"format": "PNG", "compress_level": 1})]
        if self.options.heads:
            sheet = heatmaps.heads_sheet(original, list(maps.heads), maps.region, self.options.alpha)
            files.append(ImageFile("heads", planner.path_for(path, "heads", "png"), sheet,
                                   {"format": "PNG", "compress_level": 1}))
        return files


def entropy(weights: np.ndarray) -> float:
    """Shannon entropy in nats of the map re-normalised to sum to 1 over the patches (not divided by
    its maximum, the log of the patch count)."""
    p = weights.astype(np.float64).ravel()
    p = p / p.sum()
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def keep_mass_mask(weights: np.ndarray, mass: float) -> np.ndarray:
    """The DINO paper's mask: the fewest highest-weighted patches whose share of the map's total is at
    least `mass` (its code: sort ascending, keep where the cumulative share exceeds 1 - mass)."""
    flat = weights.astype(np.float64).ravel()
    order = np.argsort(flat, kind="stable")
    cumulative = np.cumsum(flat[order]) / flat.sum()
    keep = np.empty(flat.shape, dtype=bool)
    keep[order] = cumulative > 1.0 - mass
    return keep.reshape(weights.shape)
