"""Depth maps as files: a lossless 16-bit PNG whose levels map linearly back to the model's values, and
a viridis preview with a small legend. NumPy and Pillow only: no model code here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PNG_LEVELS = 65535

# Viridis as a degree-6 polynomial per channel (Matt Zucker's least-squares fit to matplotlib's table,
# within a few levels of it everywhere): perceptually uniform, readable in greyscale and by people
# with colour-vision deficiencies, and no matplotlib dependency. Rows: coefficients of t^0 .. t^6.
_VIRIDIS_COEFFICIENTS = np.array([
    [0.2777273272234177, 0.005407344544966578, 0.3340998053353061],
    [0.1050930431085774, 1.404613529898575, 1.384590162594685],
    [-0.3308618287255563, 0.214847559468213, 0.09509516302823659],
    [-4.634230498983486, -5.799100973351585, -19.33244095627987],
    [6.228269936347081, 14.17993336680509, 56.69055260068105],
    [4.776384997670288, -13.74514537774601, -65.35303263337234],
    [-5.435455855934631, 4.645852612178535, 26.3124352495832],
])


def _viridis_table() -> np.ndarray:
    t = np.linspace(0.0, 1.0, 256)[:, None]
    rgb = sum(c * t ** power for power, c in enumerate(_VIRIDIS_COEFFICIENTS))
    return np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)  # (256, 3)


VIRIDIS = _viridis_table()
LEGEND_MIN_IMAGE = (96, 48)  # (width, height): smaller previews get no legend, it would hide them


@dataclass(frozen=True)
class Quantised:
    """`value = levels * scale + offset` within half a level (scale / 2) of the model's value, plus the
    float32 arithmetic's rounding (under 1% of a level)."""

    levels: np.ndarray  # (H, W) uint16, 0 at the minimum, 65535 at the maximum
    scale: float
    offset: float


def value_range(depth: np.ndarray) -> tuple[float, float] | None:
    """(min, max) of a depth map, or None if any value is NaN or infinite (min and max propagate both)."""
    low, high = float(depth.min()), float(depth.max())
    return (low, high) if np.isfinite(low) and np.isfinite(high) else None


def level_scale(low: float, high: float) -> float:
    """The value one PNG level stands for; 0 for a flat map (every level 0, every value the offset)."""
    return (high - low) / PNG_LEVELS if high > low else 0.0


def quantise(depth: np.ndarray, low: float, high: float) -> Quantised:
    """Linear 16-bit levels of an (H, W) float32 map, with one float32 temporary the map's size."""
    scale = level_scale(low, high)
    if scale == 0.0:
        return Quantised(np.zeros(depth.shape, np.uint16), 0.0, low)
    levels = np.subtract(depth, np.float32(low), dtype=np.float32)
    levels *= np.float32(1.0 / scale)
    np.rint(levels, out=levels)
    np.clip(levels, 0, PNG_LEVELS, out=levels)
    return Quantised(levels.astype(np.uint16), scale, low)


def levels_image(levels: np.ndarray) -> Image.Image:
    """A 16-bit greyscale image (Pillow mode I;16) that PNG stores losslessly."""
    return Image.fromarray(levels)


def preview_image(levels: np.ndarray, nearer_is_larger: bool, low: float, high: float, unit: str) -> Image.Image:
    """Viridis colours of the levels, near bright and far dark whatever the kind, with a legend bar
    from the minimum (left) to the maximum (right) in the bottom-left corner."""
    index = (levels >> 8).astype(np.uint8)  # (H, W): the top 8 bits of each level
    if not nearer_is_larger:
        np.subtract(255, index, out=index)
    preview = Image.fromarray(VIRIDIS[index])  # (H, W, 3) uint8
    del index
    if preview.width >= LEGEND_MIN_IMAGE[0] and preview.height >= LEGEND_MIN_IMAGE[1]:
        draw_legend(preview, nearer_is_larger, low, high, unit)
    return preview


def draw_legend(image: Image.Image, nearer_is_larger: bool, low: float, high: float, unit: str) -> None:
    """In place: a gradient bar labelled with the minimum and maximum on a dark panel, sized to the image."""
    short_side = min(image.size)
    margin = max(4, short_side // 60)
    font = ImageFont.load_default(size=max(10, short_side // 40))
    bar_width, bar_height = max(48, image.width // 4), max(6, short_side // 50)
    suffix = " m" if unit == "metres" else ""
    left_text, right_text = f"{low:.3g}{suffix}", f"{high:.3g}{suffix}"
    draw = ImageDraw.Draw(image)
    text_height = draw.textbbox((0, 0), "0.9", font=font)[3]
    panel_height = bar_height + text_height + 3 * margin
    x0, y0 = margin, image.height - margin - panel_height
    draw.rectangle((x0, y0, x0 + bar_width + 2 * margin, y0 + panel_height), fill=(20, 20, 20))
    ramp = np.linspace(0, 255, bar_width).astype(np.uint8)
    ramp = ramp if nearer_is_larger else 255 - ramp
    bar = Image.fromarray(np.repeat(VIRIDIS[ramp][None], bar_height, axis=0))  # (bar_height, bar_width, 3)
    image.paste(bar, (x0 + margin, y0 + margin))
    text_y = y0 + 2 * margin + bar_height
    draw.text((x0 + margin, text_y), left_text, fill=(255, 255, 255), font=font)
    right_width = draw.textlength(right_text, font=font)
    draw.text((x0 + margin + bar_width - right_width, text_y), right_text, fill=(255, 255, 255), font=font)
