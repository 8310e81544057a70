"""Masked-autoencoder inpainting (ViTMAE): hide some patches, let the decoder reconstruct them, and paste
the reconstruction into the full-resolution original where, and only where, patches were hidden.

Geometry: the processor stretches every image to the model's S x S input, cut into a rows x cols grid of
p x p patches. A region in original pixels maps to the grid by that stretch; a patch is masked if the
region overlaps it with positive area. Back in the original, a pixel belongs to the patch its centre
falls in, so every pixel inside a box belongs to a masked patch and every other pixel keeps its value.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import threading
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from vitkit.models.backends.hf import HfAssets, processor_short_side
from vitkit.inputs.data import Sample
from vitkit.inputs.decode import DEFAULT_MAX_PIXELS, DecodeOptions, decode_image
from vitkit.errors import InputError, UsageError
from vitkit.models.loading import LoadedModel
from vitkit.outputs.files import OutputPlanner, save_image
from vitkit.outputs.records import RecordLayout
from vitkit.tasks.base import file_outputs

DEFAULT_MASK_RATIO = 0.75  # MAE's pre-training ratio
DEFAULT_SEED = 0
NORM_PIX_EPS = 1.0e-6  # the model's own: target = (x - mean) / (var + 1e-6) ** 0.5
GRID_PANEL_SIDE = 512  # --grid panels are scaled down (never up) to fit this square
GRID_GUTTER = 8
MASKED_GREY = 128

Box = tuple[float, float, float, float]

# random_masking reads one shared config attribute; forwards that set it are serialised.
_MASK_RATIO_LOCK = threading.Lock()


def _describe(record: dict[str, Any]) -> str:
    return f"{record.get('masked_fraction', 0.0):.0%} masked → {record.get('output')}"


_CSV_COLUMNS = ("path", "width", "height", "masked_fraction", "output", "grid", "error")

INPAINT_LAYOUT = RecordLayout(
    csv_columns=_CSV_COLUMNS,
    csv_rows=lambda record: [{key: record.get(key) for key in _CSV_COLUMNS}],
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
class PatchGrid:
    """The model's input: rows x cols patches of `patch` pixels; the processor stretches images onto it."""

    rows: int
    cols: int
    patch: int

    @property
    def total(self) -> int:
        return self.rows * self.cols


# --- which patches are masked -----------------------------------------------------------------------

def _cells_overlapping(start: Fraction, stop: Fraction, length: int, cells: int) -> tuple[int, int]:
    """Cells [first, last) of `cells` equal cells over [0, length) that [start, stop) overlaps with positive area."""
    start, stop = max(start, Fraction(0)), min(stop, Fraction(length))
    if stop <= start:
        return 0, 0
    return math.floor(start * cells / length), math.ceil(stop * cells / length)


def box_patch_mask(box: Box, width: int, height: int, grid: PatchGrid) -> np.ndarray:
    """(rows, cols) bool: the patches a box in original pixels overlaps once the image is stretched onto the grid.
    Exact arithmetic: a box edge on a patch boundary does not take the patch beyond it."""
    x0, y0, x1, y1 = (Fraction(v) for v in box)
    first_col, last_col = _cells_overlapping(x0, x1, width, grid.cols)
    first_row, last_row = _cells_overlapping(y0, y1, height, grid.rows)
    mask = np.zeros((grid.rows, grid.cols), dtype=bool)
    mask[first_row:last_row, first_col:last_col] = True
    return mask


def _overlap_matrix(length: int, cells: int) -> np.ndarray:
    """(length, cells) float32: 1 where pixel i of `length` overlaps cell j with positive area."""
    index = np.arange(length, dtype=np.int64)
    first = index * cells // length
    last = -((-(index + 1) * cells) // length)  # ceil((i + 1) * cells / length)
    cell = np.arange(cells)
    return ((cell >= first[:, None]) & (cell < last[:, None])).astype(np.float32)


def image_patch_mask(painted: np.ndarray, grid: PatchGrid) -> np.ndarray:
    """(h, w) bool mask image (True = inpaint), stretched over the grid -> (rows, cols) bool: every patch
    that any painted pixel overlaps."""
    height, width = painted.shape
    per_row = _overlap_matrix(height, grid.rows).T @ painted.astype(np.float32)  # (rows, w)
    return (per_row @ _overlap_matrix(width, grid.cols)) > 0  # (rows, cols)


def random_patch_mask(grid: PatchGrid, ratio: float, seed: int, key: str) -> np.ndarray:
    """(rows, cols) bool with round(total * ratio) patches masked. The draw depends only on the seed and
    `key` (the input's path), never on batch composition or input order."""
    count = math.floor(grid.total * ratio + 0.5)
    digest = hashlib.sha256(str(seed).encode() + b"\0" + os.fsencode(key)).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    mask = np.zeros(grid.total, dtype=bool)
    mask[torch.randperm(grid.total, generator=generator)[:count].numpy()] = True
    return mask.reshape(grid.rows, grid.cols)


def pixel_mask(patches: np.ndarray, width: int, height: int) -> np.ndarray:
    """(rows, cols) bool -> (height, width) bool: a pixel is masked when its centre lies in a masked patch."""
    rows, cols = patches.shape
    row = (2 * np.arange(height, dtype=np.int64) + 1) * rows // (2 * height)  # floor((y + 0.5) * rows / height)
    col = (2 * np.arange(width, dtype=np.int64) + 1) * cols // (2 * width)
    return patches[row[:, None], col[None, :]]


# --- pixels -----------------------------------------------------------------------------------------

def denormalise_patches(predicted: torch.Tensor, target: torch.Tensor, masked: torch.Tensor,
                        eps: float = NORM_PIX_EPS) -> torch.Tensor:
    """norm_pix_loss predictions (B, N, D), each patch normalised by its own mean and variance over all its
    D = p*p*C values (channels together, as the model's loss) -> the processor's normalised space.

    Visible patches use their own statistics, taken from `target` (the patchified input). A masked patch's
    are unknown: it gets the image's typical patch statistics, the mean of the visible patches' means and
    the mean of their variances (the square root taken after averaging). Colour lives inside the
    normalised prediction, so one mean and one scale per image, not per channel, avoid applying it twice.
    With no visible patch: mean 0, variance 1, i.e. the dataset statistics the processor normalises by.
    """
    mean = target.mean(dim=-1, keepdim=True)  # (B, N, 1)
    var = target.var(dim=-1, keepdim=True)  # unbiased, as in the model's loss
    visible = (~masked).unsqueeze(-1).to(target.dtype)  # (B, N, 1)
    count = visible.sum(dim=1, keepdim=True)  # (B, 1, 1)
    seen = count > 0
    guess_mean = torch.where(seen, (mean * visible).sum(dim=1, keepdim=True) / count.clamp(min=1), 0.0)
    guess_var = torch.where(seen, (var * visible).sum(dim=1, keepdim=True) / count.clamp(min=1), 1.0 - eps)
    is_masked = masked.unsqueeze(-1)
    mean = torch.where(is_masked, guess_mean, mean)
    var = torch.where(is_masked, guess_var, var)
    return predicted * (var + eps).sqrt() + mean


@dataclass(frozen=True)
class PixelScale:
    """Undoes the processor's rescale and normalisation: model space -> 0..255."""

    mean: torch.Tensor  # (C, 1, 1)
    std: torch.Tensor
    scale: float

    @classmethod
    def from_processor(cls, processor: Any) -> "PixelScale":
        normalise = getattr(processor, "do_normalize", True)
        mean = processor.image_mean if normalise else (0.0, 0.0, 0.0)
        std = processor.image_std if normalise else (1.0, 1.0, 1.0)
        scale = float(processor.rescale_factor) if getattr(processor, "do_rescale", True) else 1.0
        as_tensor = lambda values: torch.tensor(values, dtype=torch.float32).reshape(-1, 1, 1)  # noqa: E731
        return cls(as_tensor(mean), as_tensor(std), scale)

    def to_image(self, values: torch.Tensor) -> Image.Image:
        """(C, H, W) in model space -> an RGB image."""
        pixels = (values.float().cpu() * self.std + self.mean) / self.scale
        array = pixels.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
        return Image.fromarray(np.ascontiguousarray(array), "RGB")


@dataclass(frozen=True)
class MaePreprocess:
    """Runs in dataloader workers: the checkpoint's processor stretches and normalises one image."""

    processor: Any

    def __call__(self, image: Any) -> torch.Tensor:
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]  # (3, S, S)


@dataclass(frozen=True)
class Reconstruction:
    """One image's result at the model's resolution."""

    predicted: Image.Image  # every patch as the decoder predicts it
    pasted: Image.Image  # predicted where masked, the model's input where visible
    patches: np.ndarray  # (rows, cols) bool, True = masked


class InpaintTask:
    """`forward` passes the batch through: each image's mask depends on its path (seed) and its size (box),
    which only `postprocess` receives, so the model runs there, with the runner's autocast re-entered."""

    layout = INPAINT_LAYOUT

    def __init__(self, model: LoadedModel, options: InpaintOptions, inputs: Sequence[str] = ()) -> None:
        module = model.module
        if not isinstance(model.assets, HfAssets) or not all(
                hasattr(module, name) for name in ("patchify", "unpatchify", "vit", "decoder")):
            raise UsageError(f"model {model.spec.id!r} is not a masked autoencoder (ViTMAEForPreTraining)",
                             hint="pick one from `vitkit models list`, e.g. --model mae-base")
        self.model = model
        self.options = options
        self.processor = getattr(model.assets.processor, "image_processor", model.assets.processor)
        self.grid = _check_geometry(module.config, self.processor)
        self.norm_pix = bool(getattr(module.config, "norm_pix_loss", False))
        self.pixels = PixelScale.from_processor(self.processor)
        self.painted = image_patch_mask(_read_mask(options.mask), self.grid) if options.mask else None
        self.preprocess = MaePreprocess(self.processor)
        self.draft_size = processor_short_side(self.processor)
        self.planner = OutputPlanner(options.out_dir or "", inputs)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return pixel_values  # (B, 3, S, S)

    def postprocess(self, pixel_values: torch.Tensor, samples: Sequence[Sample]) -> list[dict[str, Any] | InputError]:
        patches = np.stack([self.patch_mask(sample) for sample in samples])  # (B, rows, cols)
        results = self.reconstruct(pixel_values, torch.from_numpy(patches.reshape(len(samples), -1)))
        return [file_outputs(self._write, sample, result) for sample, result in zip(samples, results)]

    def patch_mask(self, sample: Sample) -> np.ndarray:
        """(rows, cols) bool, True where this image's patches are hidden from the encoder."""
        if self.painted is not None:
            return self.painted
        if self.options.box is not None:
            return box_patch_mask(self.options.box, sample.width or 0, sample.height or 0, self.grid)
        ratio = DEFAULT_MASK_RATIO if self.options.mask_ratio is None else self.options.mask_ratio
        seed = DEFAULT_SEED if self.options.seed is None else self.options.seed
        return random_patch_mask(self.grid, ratio, seed, sample.path)

    def reconstruct(self, pixel_values: torch.Tensor, masked: torch.Tensor) -> list[Reconstruction]:
        """(B, 3, S, S) inputs and (B, N) bool masks -> one reconstruction per image."""
        from vitkit.runtime.runner import autocast_for

        module = self.model.module
        masked = masked.to(pixel_values.device)
        with autocast_for(self.model.device, self.model.dtype):
            logits = self._predict(pixel_values, masked).float()  # (B, N, p*p*3)
        target = module.patchify(pixel_values.float())  # (B, N, p*p*3)
        if self.norm_pix:
            logits = denormalise_patches(logits, target, masked)
        pasted = torch.where(masked.unsqueeze(-1), logits, target)
        predicted_images, pasted_images = module.unpatchify(logits), module.unpatchify(pasted)  # (B, 3, S, S)
        shape = (self.grid.rows, self.grid.cols)
        return [Reconstruction(self.pixels.to_image(predicted_images[i]), self.pixels.to_image(pasted_images[i]),
                               masked[i].cpu().numpy().reshape(shape)) for i in range(len(masked))]

    def _predict(self, pixel_values: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """The decoder's logits with exactly `masked` hidden. random_masking keeps the patches of lowest
        noise, and int(N * (1 - config.mask_ratio)) of them for the whole batch, so images are grouped by
        how many patches they keep, and each group gets noise 0 (visible) / 1 (masked) and its own ratio."""
        module = self.model.module
        keeps = (~masked).sum(dim=1)  # (B,)
        parts = []
        for keep in keeps.unique().tolist():
            group = (keeps == keep).nonzero().squeeze(1)
            with _mask_ratio_keeping(module.vit.embeddings.config, int(keep), masked.shape[1]):
                out = module(pixel_values=pixel_values[group], noise=masked[group].float())
            if not torch.equal(out.mask.bool(), masked[group]):
                raise RuntimeError("ViTMAE masked other patches than asked; its random_masking has changed")
            parts.append((group, out.logits))
        logits = parts[0][1].new_empty((len(masked), *parts[0][1].shape[1:]))  # (B, N, p*p*3)
        for group, part in parts:
            logits[group] = part
        return logits

    def _write(self, sample: Sample, result: Reconstruction) -> dict[str, Any]:
        original = decode_image(sample.path, DecodeOptions(max_pixels=self.options.max_pixels)).image  # full, upright
        size = original.size
        hidden = pixel_mask(result.patches, *size)[..., None]  # (H, W, 1)
        pixels = np.asarray(original)
        filled = np.asarray(result.pasted.resize(size, Image.Resampling.BICUBIC))
        composite = Image.fromarray(np.where(hidden, filled, pixels), "RGB")
        fields: dict[str, Any] = {"output": self._save(sample, "inpaint", composite),
                                  "masked_fraction": float(result.patches.mean())}
        if self.options.grid:
            masked_view = Image.fromarray(np.where(hidden, np.uint8(MASKED_GREY), pixels), "RGB")
            predicted = result.predicted.resize(size, Image.Resampling.BICUBIC)
            sheet = side_by_side([original, masked_view, predicted, composite])
            fields["grid"] = self._save(sample, "grid", sheet, compress_level=1)  # for looking at: fast to write
        return fields

    def _save(self, sample: Sample, kind: str, image: Image.Image, compress_level: int = 6) -> str:
        target = self.planner.path_for(sample.path, kind, "png")
        save_image(image, target, format="PNG", compress_level=compress_level)
        return str(target)


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


@contextlib.contextmanager
def _mask_ratio_keeping(config: Any, keep: int, total: int) -> Iterator[None]:
    """Make random_masking keep exactly `keep` of `total` patches: a ratio half a patch beyond it makes
    int(total * (1 - ratio)) == keep whatever the float rounding (it is negative when keep == total).
    The ratio lives in the model's shared config, so the lock makes concurrent forwards take turns."""
    with _MASK_RATIO_LOCK:
        saved = config.mask_ratio
        config.mask_ratio = (total - keep - 0.5) / total
        try:
            yield
        finally:
            config.mask_ratio = saved


def _check_geometry(config: Any, processor: Any) -> PatchGrid:
    """The patch grid, after checking the processor stretches whole images to the model's input size
    (a crop or an aspect-keeping resize would break the mapping from original pixels to patches)."""
    side = config.image_size if isinstance(config.image_size, int) else tuple(config.image_size)
    height, width = (side, side) if isinstance(side, int) else side
    patch = config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0]
    size = getattr(processor, "size", None)
    get = size.get if isinstance(size, dict) else (lambda key: getattr(size, key, None))
    resized = (get("height"), get("width")) if size is not None else (None, None)
    stretches = getattr(processor, "do_resize", True) and not getattr(processor, "do_center_crop", False)
    if resized != (height, width) or not stretches:
        raise UsageError(f"the model's processor does not resize images to its {width}x{height} input",
                         hint="its preprocessor_config.json should resize to that size, without cropping")
    return PatchGrid(height // patch, width // patch, patch)


def _read_mask(path: str) -> np.ndarray:
    """The mask image as displayed, as (h, w) bool: True where light (luminance > 127) and not transparent."""
    try:
        light = np.asarray(decode_image(path).image.convert("L")) > 127  # transparency comes composited on white
    except InputError as exc:
        raise UsageError(f"cannot read --mask {path}: {exc.message}") from exc
    with Image.open(path) as image:
        if "A" in image.getbands() or "transparency" in image.info:
            alpha = ImageOps.exif_transpose(image).convert("RGBA").getchannel("A")
            light &= np.asarray(alpha) > 127
    return light
