"""Masked-autoencoder inpainting (ViTMAE): hide some patches, let the decoder reconstruct them, and paste
the reconstruction into the full-resolution original where, and only where, patches were hidden.

Each image's patches are chosen in the dataloader workers (vitkit/tasks/inpaint_masks.py), the model
runs in `forward` (ViTMAE specifics: vitkit/models/backends/mae.py), and the full-size composite and
grid are made by the output stage.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from PIL import Image
from torch.utils.data import default_collate

from vitkit.errors import UsageError
from vitkit.inputs.data import ImageMeta, Sample
from vitkit.inputs.decode import DEFAULT_MAX_PIXELS, DecodeOptions, decode_image
from vitkit.models.backends import mae
from vitkit.models.backends.hf import HfAssets, processor_short_side
from vitkit.models.loading import LoadedModel
from vitkit.outputs.artifacts import Artifacts, ImageFile
from vitkit.outputs.files import OutputPlanner
from vitkit.outputs.records import RecordLayout, flat_rows
from vitkit.tasks.base import TaskResult
from vitkit.tasks.inpaint_masks import Box, PatchMasking, image_patch_mask, pixel_mask, read_mask_image

DEFAULT_MASK_RATIO = 0.75  # MAE's pre-training ratio
DEFAULT_SEED = 0
GRID_PANEL_SIDE = 512  # --grid panels are scaled down (never up) to fit this square
GRID_GUTTER = 8
MASKED_GREY = 128


def _describe(record: dict[str, Any]) -> str:
    return f"{record.get('masked_fraction', 0.0):.0%} masked → {record.get('output')}"


_CSV_COLUMNS = ("path", "width", "height", "masked_fraction", "output", "grid", "error")

INPAINT_LAYOUT = RecordLayout(
    csv_columns=_CSV_COLUMNS,
    csv_rows=flat_rows(_CSV_COLUMNS),
    describe=_describe,
)


def parse_box(text: str) -> Box:
    """'x0,y0,x1,y1' in original-image pixels (x1, y1 exclusive) -> a box; UsageError if malformed."""
    parts = [part.strip() for part in text.split(",")]
    try:
        values = [float(part) for part in parts]
    except ValueError:
        values = []
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise UsageError(f"--box {text!r} is not four numbers x0,y0,x1,y1", hint="e.g. --box 40,60,200,180")
    x0, y0, x1, y1 = values
    if x1 <= x0 or y1 <= y0:
        raise UsageError(f"--box {text!r} is empty: it needs x0 < x1 and y0 < y1")
    return x0, y0, x1, y1


@dataclass(frozen=True)
class InpaintOptions:
    """Exactly one masking: random (mask_ratio, seed; the default), a box, or a mask image (white = inpaint)."""

    out_dir: str | None
    mask_ratio: float | None = None  # None: DEFAULT_MASK_RATIO when neither box nor mask is given
    seed: int | None = None  # None: DEFAULT_SEED, so runs are reproducible by default
    box: Box | None = None
    mask: str | None = None  # path of the mask image, stretched over each input
    grid: bool = False  # also write original | masked | reconstruction | composite
    max_pixels: int = DEFAULT_MAX_PIXELS  # for decoding the originals again at full size

    def __post_init__(self) -> None:
        if not self.out_dir:
            raise UsageError("inpaint writes images: --out-dir is required", hint="e.g. --out-dir inpainted/")
        if self.box is not None and self.mask is not None:
            raise UsageError("--box and --mask cannot be combined", hint="draw the box into the mask image instead")
        if not self.is_random and self.mask_ratio is not None:
            raise UsageError("--mask-ratio only applies to random masking", hint="drop it, or drop --box/--mask")
        if not self.is_random and self.seed is not None:
            raise UsageError("--seed only applies to random masking", hint="--box and --mask are deterministic")
        if self.mask_ratio is not None and not 0.0 <= self.mask_ratio <= 1.0:
            raise UsageError(f"--mask-ratio must be between 0 and 1, not {self.mask_ratio}")

    @property
    def is_random(self) -> bool:
        return self.box is None and self.mask is None


@dataclass(frozen=True)
class MaePreprocess:
    """Runs in dataloader workers: the checkpoint's processor stretches and normalises one image, and
    its patch mask becomes the noise that makes the model hide exactly those patches."""

    processor: Any
    masking: PatchMasking

    def __call__(self, image: Any, meta: ImageMeta) -> dict[str, torch.Tensor]:
        noise = mae.masking_noise(self.masking.patches(meta))  # (N,) first: a box that misses fails fast
        return {"pixel_values": self.processor(images=image, return_tensors="pt")["pixel_values"][0],  # (3, S, S)
                "noise": noise}


class InpaintTask:
    layout = INPAINT_LAYOUT

    def __init__(self, model: LoadedModel, options: InpaintOptions, inputs: Sequence[str] = ()) -> None:
        if not isinstance(model.assets, HfAssets) or not mae.is_masked_autoencoder(model.module):
            raise UsageError(f"model {model.spec.id!r} is not a masked autoencoder (ViTMAEForPreTraining)",
                             hint="pick one from `vitkit models list`, e.g. --model mae-base")
        self.model = model
        self.options = options
        self.processor = getattr(model.assets.processor, "image_processor", model.assets.processor)
        self.grid = mae.patch_grid(model.module.config, self.processor)
        self.pixels = mae.PixelScale.from_processor(self.processor)
        mae.use_exact_masks(model.module)
        self.preprocess = MaePreprocess(self.processor, _masking(options, self.grid))
        self.collate_inputs = default_collate
        self.draft_size = processor_short_side(self.processor)
        self.planner = OutputPlanner(options.out_dir or "", inputs)

    def forward(self, inputs: dict[str, torch.Tensor]) -> mae.MaeOutputs:
        return mae.predict(self.model.module, inputs["pixel_values"], inputs["noise"])

    def postprocess(self, outputs: mae.MaeOutputs, samples: Sequence[Sample]) -> list[TaskResult]:
        results: list[TaskResult] = []
        for sample, result in zip(samples, self.reconstructions(outputs)):
            fields = {"output": None, "masked_fraction": float(result.patches.mean())}
            if self.options.grid:
                fields["grid"] = None
            results.append(Artifacts(fields, functools.partial(self._files, sample.path, result)))
        return results

    def reconstructions(self, outputs: mae.MaeOutputs) -> list[mae.Reconstruction]:
        """`forward`'s outputs -> one reconstruction per image, at the model's resolution."""
        return mae.reconstruct(self.model.module, outputs, self.grid, self.pixels)

    def _files(self, path: str, result: mae.Reconstruction) -> list[ImageFile]:
        """The composite (and the grid) at the original's full size. Runs in the output stage."""
        original = decode_image(path, DecodeOptions(max_pixels=self.options.max_pixels)).image  # full, upright
        size = original.size
        # Pasted through a 1-bit mask, in place: no full-size array copies of the image. At 12 MP that
        # halves what each output thread holds (about 100 MiB instead of 200), with the same pixels.
        hidden = Image.fromarray(pixel_mask(result.patches, *size))  # mode "1", (W, H)
        composite = original.copy() if self.options.grid else original
        composite.paste(result.pasted.resize(size, Image.Resampling.BICUBIC), (0, 0), hidden)
        files = [ImageFile("output", self.planner.path_for(path, "inpaint", "png"), composite, {"format": "PNG"})]
        if self.options.grid:
            masked_view = original.copy()
            masked_view.paste((MASKED_GREY,) * 3, (0, 0, *size), hidden)
            predicted = result.predicted.resize(size, Image.Resampling.BICUBIC)
            sheet = side_by_side([original, masked_view, predicted, composite])
            # for looking at: fast to write
            files.append(ImageFile("grid", self.planner.path_for(path, "grid", "png"), sheet,
                                   {"format": "PNG", "compress_level": 1}))
        return files


def _masking(options: InpaintOptions, grid: mae.PatchGrid) -> PatchMasking:
    if options.mask is not None:
        return PatchMasking(grid, painted=image_patch_mask(read_mask_image(options.mask), grid))
    if options.box is not None:
        return PatchMasking(grid, box=options.box)
    ratio = DEFAULT_MASK_RATIO if options.mask_ratio is None else options.mask_ratio
    return PatchMasking(grid, ratio=ratio, seed=DEFAULT_SEED if options.seed is None else options.seed)


def side_by_side(panels: Sequence[Image.Image]) -> Image.Image:
    """Equal-size panels, scaled down to fit GRID_PANEL_SIDE, left to right on white with gutters."""
    width, height = panels[0].size
    scale = min(1.0, GRID_PANEL_SIDE / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    sheet = Image.new("RGB", (len(panels) * size[0] + (len(panels) - 1) * GRID_GUTTER, size[1]), (255, 255, 255))
    for i, panel in enumerate(panels):
        panel = panel.resize(size, Image.Resampling.LANCZOS) if scale < 1 else panel
        sheet.paste(panel, (i * (size[0] + GRID_GUTTER), 0))
    return sheet
