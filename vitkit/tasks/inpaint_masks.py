"""Which patches inpaint hides in each image, and which original pixels they cover.

Geometry: the processor stretches every image to the model's S x S input, cut into a rows x cols grid of
p x p patches. A region in original pixels maps to the grid by that stretch; a patch is masked if the
region overlaps it with positive area. Back in the original, a pixel belongs to the patch its centre
falls in, so every pixel inside a box belongs to a masked patch and every other pixel keeps its value.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch
from PIL import Image, ImageOps

from vitkit.errors import InputError, UsageError
from vitkit.inputs.data import ImageMeta
from vitkit.inputs.decode import decode_image
from vitkit.models.backends.mae import PatchGrid

Box = tuple[float, float, float, float]


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


@dataclass(frozen=True, eq=False)
class PatchMasking:
    """Exactly one of: a box in original pixels, a painted mask image, or random patches (ratio and seed).
    Picklable: it runs in dataloader workers, where each input's path and size are known."""

    grid: PatchGrid
    box: Box | None = None
    painted: np.ndarray | None = None  # (rows, cols) bool, already stretched over the grid
    ratio: float = 0.0
    seed: int = 0

    def patches(self, meta: ImageMeta) -> np.ndarray:
        """(rows, cols) bool, True where this image's patches are hidden from the encoder."""
        if self.painted is not None:
            return self.painted
        if self.box is not None:
            mask = box_patch_mask(self.box, meta.width, meta.height, self.grid)
            if not mask.any():  # the box has an area, so it misses only an image it lies beside
                box = ",".join(f"{value:g}" for value in self.box)
                raise InputError(f"--box {box} lies outside the image ({meta.width}×{meta.height})",
                                 kind="box outside the image")
            return mask
        return random_patch_mask(self.grid, self.ratio, self.seed, meta.path)


def read_mask_image(path: str) -> np.ndarray:
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
