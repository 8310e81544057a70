"""Qwen2-VL-style processors flatten every image's patches into one (N, D) `pixel_values` tensor, each
image's share given by its (t, h, w) grid in `image_grid_thw`. The runner slices batches along dim 0
(the out-of-memory back-off) and choices repeat each image along it, so between the dataloader and the
model call a batch holds them as (B, n_max, D), one zero-padded row of patches per image, and is
flattened again only for the model.
"""

from __future__ import annotations

import torch

PATCHES = "pixel_values"
GRID = "image_grid_thw"  # (B, 3)


def one_image_patches(encoded: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One image's processor output with its flattened (n, D) patches as a (1, n, D) batch row."""
    if GRID in encoded and PATCHES in encoded and encoded[PATCHES].dim() == 2:
        return {**encoded, PATCHES: encoded[PATCHES][None]}
    return encoded


def model_pixels(pixels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Batch rows of patches -> the flattened (N, D) tensor the model takes (padding dropped)."""
    if GRID not in pixels or PATCHES not in pixels or pixels[PATCHES].dim() != 3:
        return pixels
    counts = pixels[GRID].prod(dim=-1).tolist()
    return {**pixels, PATCHES: torch.cat([row[:count] for row, count in zip(pixels[PATCHES], counts)])}
