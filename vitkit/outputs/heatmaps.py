"""Heat maps on images: a patch-grid map stretched over the region of the image the model saw, coloured
with a perceptual colour map (inferno) and blended in; per-head sheets. NumPy and Pillow only.

Patch edges are whole pixels, computed once (`patch_edges`): a thresholded mask drawn here and the
area and box a record gives for it cover exactly the same pixels.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image

Region = tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of the image (may pass its edges)

# Matt Zucker's 6th-order polynomial fit of matplotlib's inferno (public domain, shadertoy WlfXRN):
# perceptually uniform, dark for low attention and bright yellow for high, readable in greyscale.
_INFERNO_COEFFICIENTS = np.array([
    [0.0002189403691192265, 0.001651004631001012, -0.01948089843709184],
    [0.1065134194856116, 0.5639564367884091, 3.932712388889277],
    [11.60249308247187, -3.972853965665698, -15.9423941062914],
    [-41.70399613139459, 17.43639888205313, 44.35414519872813],
    [77.162935699427, -33.40235894210092, -81.80730925738993],
    [-71.31942824499214, 32.62606426397723, 73.20951985803202],
    [25.13112622477341, -12.24266895238567, -23.07032500287172],
])


def _inferno_table() -> np.ndarray:
    t = np.linspace(0.0, 1.0, 256)[:, None]
    colours = sum(c * t ** power for power, c in enumerate(_INFERNO_COEFFICIENTS))
    return np.round(np.clip(colours, 0.0, 1.0) * 255).astype(np.uint8)


INFERNO = _inferno_table()  # (256, 3) uint8
PANEL_SIDE = 256  # --heads panels are scaled down (never up) to fit this square
PANEL_COLUMNS = 6  # as the DINO paper's figure: ViT-S's six heads in a row
GUTTER = 4


def patch_edges(region: Region, grid: tuple[int, int], width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel edges of the patch grid's columns (gw + 1) and rows (gh + 1) over `region` of a width x
    height image, clipped to the image: patch (i, j) covers [xs[j], xs[j+1]) x [ys[i], ys[i+1])."""
    x0, y0, x1, y1 = region[0] * width, region[1] * height, region[2] * width, region[3] * height
    xs = np.round(x0 + np.arange(grid[1] + 1) * (x1 - x0) / grid[1]).astype(np.int64)
    ys = np.round(y0 + np.arange(grid[0] + 1) * (y1 - y0) / grid[0]).astype(np.int64)
    return np.clip(xs, 0, width), np.clip(ys, 0, height)


def mask_extent(patches: np.ndarray, region: Region, width: int, height: int) -> tuple[int, list[int] | None]:
    """(pixels, [x0, y0, x1, y1]) of a (gh, gw) boolean patch mask drawn over `region` of the image;
    the box is None when the mask covers no pixel (patches thinner than a pixel on a tiny image)."""
    xs, ys = patch_edges(region, patches.shape, width, height)
    widths, heights = np.diff(xs), np.diff(ys)
    area = int(heights @ patches.astype(np.int64) @ widths)
    rows = np.flatnonzero(patches.any(axis=1) & (heights > 0))
    cols = np.flatnonzero(patches.any(axis=0) & (widths > 0))
    if area == 0:
        return 0, None
    return area, [int(xs[cols[0]]), int(ys[rows[0]]), int(xs[cols[-1] + 1]), int(ys[rows[-1] + 1])]


def heat_overlay(image: Image.Image, heat: np.ndarray, region: Region, alpha: float,
                 mask: np.ndarray | None = None) -> Image.Image:
    """`image` with `heat` ((gh, gw), scaled to its own maximum) bilinearly stretched over `region`,
    coloured and blended at `alpha`. Pixels outside the region, and outside `mask` ((gh, gw) booleans)
    when given, are the image's own."""
    original = image if image.mode == "RGB" else image.convert("RGB")
    width, height = original.size
    xs, ys = patch_edges(region, heat.shape, width, height)
    box = (int(xs[0]), int(ys[0]), int(xs[-1]), int(ys[-1]))
    if box[2] <= box[0] or box[3] <= box[1]:
        return original.copy()
    part = original.crop(box)
    tinted = Image.blend(part, _coloured(heat, region, original.size, box), alpha)
    if mask is not None:
        inside = np.repeat(np.repeat(mask, np.diff(ys), axis=0), np.diff(xs), axis=1)  # (box h, box w)
        tinted = Image.composite(tinted, part, Image.fromarray(np.where(inside, np.uint8(255), np.uint8(0))))
    blended = original.copy()
    blended.paste(tinted, box)
    return blended


def _coloured(heat: np.ndarray, region: Region, size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    """The heat map over the whole region (which may extend past the image), cropped to `box`."""
    width, height = size
    left, top = round(region[0] * width), round(region[1] * height)
    full = (max(1, round(region[2] * width) - left), max(1, round(region[3] * height) - top))
    peak = float(heat.max())
    scaled = (heat / peak if peak > 0 else np.zeros_like(heat)).astype(np.float32) * 255.0
    stretched = Image.fromarray(scaled).resize(full, Image.Resampling.BILINEAR)
    stretched = stretched.crop((box[0] - left, box[1] - top, box[2] - left, box[3] - top))
    levels = np.clip(np.asarray(stretched), 0, 255).astype(np.uint8)
    return Image.fromarray(INFERNO[levels])


def heads_sheet(image: Image.Image, heads: Sequence[np.ndarray], region: Region, alpha: float) -> Image.Image:
    """One panel per head (its map blended on the image scaled to fit PANEL_SIDE), PANEL_COLUMNS to a
    row, on white with gutters."""
    scale = min(1.0, PANEL_SIDE / max(image.size))
    small = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                         Image.Resampling.LANCZOS) if scale < 1 else image
    columns = min(len(heads), PANEL_COLUMNS)
    rows = math.ceil(len(heads) / columns)
    step_x, step_y = small.width + GUTTER, small.height + GUTTER
    sheet = Image.new("RGB", (columns * step_x - GUTTER, rows * step_y - GUTTER), (255, 255, 255))
    for index, heat in enumerate(heads):
        sheet.paste(heat_overlay(small, heat, region, alpha), ((index % columns) * step_x, (index // columns) * step_y))
    return sheet
