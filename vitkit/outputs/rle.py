"""COCO run-length encoding of binary masks, in COCO's compressed form: `{"size": [h, w], "counts": str}`.

The same bytes pycocotools' `mask.encode` writes (column-major runs starting with a run of zeros,
each count stored as the difference from the count two before it, in 5-bit groups offset by 48), so
the results load with `COCO.loadRes` and decode with `mask.decode`; written here in NumPy so that
pycocotools is not needed to produce them.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def run_lengths(mask: np.ndarray) -> list[int]:
    """(H, W) bool -> the lengths of alternating runs in column-major order, the first a run of zeros (maybe 0)."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    if flat.size == 0:
        return []
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    counts = np.diff(bounds).tolist()
    return [0, *counts] if flat[0] else counts


def _compress(counts: list[int]) -> str:
    characters = []
    for index, count in enumerate(counts):
        value = count - counts[index - 2] if index > 2 else count
        more = True
        while more:
            group = value & 0x1F
            value >>= 5  # arithmetic shift: a negative difference ends at -1
            more = value != -1 if group & 0x10 else value != 0
            characters.append(chr((group | 0x20 if more else group) + 48))
    return "".join(characters)


def _decompress(text: str) -> list[int]:
    counts: list[int] = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            group = ord(text[position]) - 48
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            position += 1
            shift += 5
            if not more and group & 0x10:
                value |= -1 << shift
        counts.append(value + counts[-2] if len(counts) > 2 else value)
    return counts


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """(H, W) bool -> COCO compressed RLE."""
    height, width = mask.shape
    return {"size": [int(height), int(width)], "counts": _compress(run_lengths(mask))}


def decode_mask(rle: dict[str, Any]) -> np.ndarray:
    """COCO RLE (compressed, or uncompressed with a list of counts) -> (H, W) bool."""
    height, width = rle["size"]
    counts = rle["counts"]
    counts = _decompress(counts.decode() if isinstance(counts, bytes) else counts) if not isinstance(counts, list) else counts
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape((width, height)).T.copy()


def mask_area(rle: dict[str, Any]) -> int:
    counts = rle["counts"]
    counts = _decompress(counts) if isinstance(counts, str) else counts
    return int(sum(counts[1::2]))
