"""Segment Anything (transformers `SamModel`) with its own processor: the image embedding computed once
per image, prompts encoded and masks decoded against it, masks brought to the original size by the
processor's own `post_process_masks`.

Coordinates: prompts come in pixels of the displayed (EXIF-oriented) image at full resolution and are
scaled to the model's input exactly as `SamProcessor` scales them (float64, x by resized width over
original width, y likewise). The resized size is what the processor gave for this decode, so a
draft-reduced JPEG gets prompts scaled to what the model actually sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from vitkit.errors import InputError

# The suffix of transformers' SAM class names (SamModel; SamHQModel is a different decoder).
SAM_ARCHITECTURE = "SamModel"
# Masks brought to full size this many at a time: each is (H, W) float32 while it is upsampled.
MASKS_PER_CHUNK = 4


def is_sam_model(module: torch.nn.Module) -> bool:
    """A SAM-family model vitkit can drive: it embeds images on their own and decodes prompts against them."""
    return (type(module).__name__.endswith(SAM_ARCHITECTURE) and hasattr(module, "get_image_embeddings")
            and hasattr(module, "prompt_encoder") and hasattr(module, "mask_decoder"))


def mask_post_processor(processor: Any) -> Any:
    """The object whose `post_process_masks` undoes this checkpoint's resize and pad (the processor's own)."""
    for candidate in (processor, getattr(processor, "image_processor", None)):
        if candidate is not None and hasattr(candidate, "post_process_masks"):
            return candidate
    raise TypeError(f"{type(processor).__name__} has no post_process_masks")


def sam_draft_size(image_processor: Any) -> int | None:
    """A draft decode may shrink a JPEG as long as its short side keeps this many pixels (the model input's
    long side: at least as many as the model sees in any direction)."""
    size = getattr(image_processor, "size", None) or {}
    edge = size.get("longest_edge") if isinstance(size, dict) else getattr(size, "longest_edge", None)
    return int(edge) if edge else None


@dataclass(frozen=True)
class SamImageInputs:
    """Runs in dataloader workers: the processor resizes the long side, normalises and pads one image."""

    image_processor: Any

    def __call__(self, image: Any) -> dict[str, torch.Tensor]:
        check_not_too_thin(self.image_processor, image.size)
        encoded = self.image_processor(images=image, return_tensors="pt")
        # (3, S, S) padded input; (2,) the resized image's (h, w) inside it
        return {"pixel_values": encoded["pixel_values"][0],
                "reshaped_input_size": torch.as_tensor(encoded["reshaped_input_sizes"][0], dtype=torch.int64)}


def check_not_too_thin(image_processor: Any, size: tuple[int, int]) -> None:
    """SAM's processor scales the long side to `longest_edge` and rounds the short one; beyond about
    2 x longest_edge : 1 that is 0 pixels and it fails inside. Say so for this input instead."""
    longest = sam_draft_size(image_processor)
    width, height = size
    if longest and min(width, height) * longest / max(width, height) < 0.5:
        raise InputError(f"a {width}x{height} image is too thin for Segment Anything: resized to {longest} pixels "
                         f"long it is less than one pixel wide", kind="too thin")


def scale_coordinates(coords: np.ndarray, original_size: tuple[int, int],
                      reshaped_size: Sequence[int]) -> np.ndarray:
    """(..., 2) x, y in original pixels -> the model input's pixels, as `SamProcessor._normalize_coordinates`."""
    old_h, old_w = original_size
    new_h, new_w = int(reshaped_size[0]), int(reshaped_size[1])
    scaled = np.array(coords, dtype=float)
    scaled[..., 0] = scaled[..., 0] * (new_w / old_w)
    scaled[..., 1] = scaled[..., 1] * (new_h / old_h)
    return scaled


def image_embeddings(module: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) -> (B, C, s, s): the vision encoder alone, once per image."""
    return module.get_image_embeddings(pixel_values.to(module.dtype))


@dataclass(frozen=True)
class DecodedMasks:
    low_res: torch.Tensor  # (B, Q, K, m, m) mask logits at the decoder's resolution, K = multimask outputs
    iou: torch.Tensor  # (B, Q, K) predicted IoU of each mask


def decode_prompts(module: torch.nn.Module, embeddings: torch.Tensor, points: torch.Tensor | None = None,
                   labels: torch.Tensor | None = None, boxes: torch.Tensor | None = None) -> DecodedMasks:
    """Q prompts per image against precomputed embeddings, in one decoder call: points (B, Q, P, 2) with
    labels (B, Q, P) and/or boxes (B, Q, 4), all in model-input pixels. SamModel's own forward, given the
    embeddings instead of pixels (prompt encoder + mask decoder), with its multimask outputs."""
    outputs = module(image_embeddings=embeddings, input_points=points, input_labels=labels, input_boxes=boxes,
                     multimask_output=True)
    return DecodedMasks(outputs.pred_masks, outputs.iou_scores)


def best_masks(low_res: torch.Tensor, iou: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image's (Q, K, m, m) logits and (Q, K) IoUs -> the likeliest mask of each prompt by predicted
    IoU: (Q, 1, m, m), (Q,) IoU, (Q,) the chosen output's index."""
    chosen = iou.argmax(dim=-1)  # ties go to the first output, as torch.argmax gives them
    rows = torch.arange(low_res.shape[0], device=low_res.device)
    return low_res[rows, chosen][:, None], iou[rows, chosen], chosen


def full_size_masks(post_processor: Any, low_res: torch.Tensor, original_size: tuple[int, int],
                    reshaped_size: Sequence[int], chunk: int = MASKS_PER_CHUNK) -> Iterator[torch.Tensor]:
    """(Q, K, m, m) logits -> (K, H, W) bool masks, one prompt at a time, via the processor's own
    `post_process_masks` (pad removed, bilinear to the original size, logit > 0). Chunks of `chunk`
    prompts keep at most that many full-size float masks alive."""
    reshaped = [int(reshaped_size[0]), int(reshaped_size[1])]
    for start in range(0, low_res.shape[0], chunk):
        group = low_res[start: start + chunk].float().cpu()
        [masks] = post_processor.post_process_masks([group], [list(original_size)], [reshaped])
        yield from masks
