"""Label-index masks: per-segment areas and boxes, connected components, lossless PNGs and colour overlays.

A label map is an (H, W) integer array the size of the original image whose pixel values are segment
ids. NumPy, SciPy and Pillow only: no model code here.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from typing import Iterable

import numpy as np
from PIL import Image
from scipy import ndimage

from vitkit.outputs.boxes import PALETTE as TABLEAU_10
from vitkit.errors import OutputError

L_MAX = 255
I16_MAX = 65535
# 8-connectivity: pixels touching only at a corner belong to the same component, so a thin diagonal
# edge of a region does not fall apart into one-pixel "instances".
CONNECTIVITY_8 = np.ones((3, 3), dtype=bool)


def _build_palette(size: int) -> np.ndarray:
    """Tableau-10 first, then hues a golden angle apart (alternating two brightnesses): neighbouring ids differ."""
    colours = [tuple(c) for c in TABLEAU_10]
    step = 0
    while len(colours) < size:
        hue = (step * 0.618033988749895) % 1.0
        saturation, value = (0.65, 0.95) if step % 2 == 0 else (0.85, 0.70)
        colours.append(tuple(round(c * 255) for c in colorsys.hsv_to_rgb(hue, saturation, value)))
        step += 1
    return np.array(colours, dtype=np.uint8)


PALETTE = _build_palette(256)  # (256, 3) uint8; id v is drawn in PALETTE[v % 256]


@dataclass(frozen=True)
class SegmentStats:
    id: int
    area: int  # pixels
    box: tuple[int, int, int, int]  # x0, y0, x1, y1: inclusive-exclusive pixel bounds


def segment_stats(label_map: np.ndarray, ignore: Iterable[int] = ()) -> dict[int, SegmentStats]:
    """Area and bounding box of every id present in `label_map`, except the `ignore` ones, by id."""
    label_map = np.asarray(label_map, dtype=np.int32)
    areas = np.bincount(label_map.ravel())
    # find_objects skips 0, so shift by one: entry i is then the bounding slices of id i.
    regions = ndimage.find_objects(label_map + 1)
    skipped = set(ignore)
    stats = {}
    for value in np.flatnonzero(areas).tolist():
        if value in skipped:
            continue
        rows, cols = regions[value]
        stats[value] = SegmentStats(value, int(areas[value]), (cols.start, rows.start, cols.stop, rows.stop))
    return stats


def drop_small(label_map: np.ndarray, stats: dict[int, SegmentStats], min_area: int,
               fill: int) -> tuple[np.ndarray, dict[int, SegmentStats]]:
    """Repaint segments smaller than `min_area` pixels with `fill` and forget them."""
    small = [value for value, s in stats.items() if s.area < min_area]
    if not small:
        return label_map, stats
    lookup = np.arange(max(int(label_map.max()), fill) + 1, dtype=np.int32)
    lookup[small] = fill
    return lookup[label_map], {value: s for value, s in stats.items() if s.area >= min_area}


def split_instances(class_map: np.ndarray, min_area: int = 0) -> tuple[np.ndarray, list[int]]:
    """Split every class of a semantic map into 8-connected components.

    Returns (instance map, owners): the map holds instance ids 1..N (0 where a component smaller
    than `min_area` was dropped) and owners[i - 1] is the class id of instance i. Ids are given
    class by class in ascending class order, then in raster order of each component's first pixel.
    """
    class_map = np.asarray(class_map, dtype=np.int32)
    instance_map = np.zeros(class_map.shape, dtype=np.int32)
    owners: list[int] = []
    for class_id, region in enumerate(ndimage.find_objects(class_map + 1)):
        if region is None:
            continue
        components, count = ndimage.label(class_map[region] == class_id, structure=CONNECTIVITY_8)
        areas = np.bincount(components.ravel(), minlength=count + 1)
        kept = np.flatnonzero(areas[1:] >= min_area) + 1
        lookup = np.zeros(count + 1, dtype=np.int32)
        lookup[kept] = np.arange(len(owners) + 1, len(owners) + 1 + len(kept), dtype=np.int32)
        instance_map[region] += lookup[components]  # components are 0 outside this class: others untouched
        owners += [class_id] * len(kept)
    return instance_map, owners


def compact(label_map: np.ndarray, max_value: int) -> np.ndarray:
    """`label_map` in the smallest unsigned type that holds `max_value` (the mask PNG's): a 12 MP map
    waiting to be written takes 12 MB, not int32's 48 MB."""
    if max_value <= L_MAX:
        return label_map.astype(np.uint8, copy=False)
    if max_value <= I16_MAX:
        return label_map.astype(np.uint16, copy=False)
    raise OutputError(f"{max_value + 1} segment ids do not fit a 16-bit mask PNG")


def label_image(label_map: np.ndarray, max_value: int) -> Image.Image:
    """Lossless label PNG content: 8-bit 'L' when every possible id fits, else 16-bit 'I;16'."""
    return Image.fromarray(compact(label_map, max_value))  # uint16: Pillow mode I;16


# Overlays are blended this many rows at a time, so a 12 MP photo needs no full-size colour or mask copies.
OVERLAY_ROWS = 256


def overlay_image(image: Image.Image, label_map: np.ndarray, alpha: float, uncoloured: Iterable[int] = ()) -> Image.Image:
    """`image` blended at `alpha` with each id's palette colour; pixels of `uncoloured` ids stay as they are."""
    original = image if image.mode == "RGB" else image.convert("RGB")
    skipped = np.asarray(list(uncoloured), dtype=np.int64)
    blended = Image.new("RGB", original.size)
    for top in range(0, original.height, OVERLAY_ROWS):
        rows = label_map[top: top + OVERLAY_ROWS]
        box = (0, top, original.width, top + rows.shape[0])
        part = original.crop(box)
        # id v is drawn in PALETTE[v % 256]: take's wrap mode is that modulo, without an index copy
        tinted = Image.blend(part, Image.fromarray(PALETTE.take(rows, axis=0, mode="wrap")), alpha)
        if skipped.size:
            keep = Image.fromarray(np.where(np.isin(rows, skipped), np.uint8(0), np.uint8(255)))
            tinted = Image.composite(tinted, part, keep)
        blended.paste(tinted, box)
    return blended
