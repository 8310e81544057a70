"""The processors' semantic and panoptic post-processing at the original image size, in bounded memory.

Each function returns exactly what the processor's own `post_process_*_segmentation(outputs,
target_sizes=[size])` returns for a batch of one, or None where this processor's post-processing is not
one reproduced here (the caller then runs the processor's own, at its memory cost). The full-size
upsampling is `segment_upsample`'s, a few channels at a time.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch

from vitkit.tasks.segment_upsample import upsampled_argmax

# Processors whose semantic post-processing ends in `interpolate(scores, target size, bilinear,
# align_corners=False).argmax(0)` over the per-image score map their `target_sizes=None` call returns.
# (OneFormer resizes with torchvision, EoMT merges patches at the target size: not these.)
_SEMANTIC_UPSAMPLE_LAST = frozenset({
    "SegformerImageProcessor", "BeitImageProcessor", "DPTImageProcessor", "MobileViTImageProcessor",
    "MobileNetV2ImageProcessor", "Mask2FormerImageProcessor", "MaskFormerImageProcessor", "DetrImageProcessor",
    "ConditionalDetrImageProcessor",
})


@dataclass(frozen=True)
class _PanopticRecipe:
    """Where a processor's panoptic post-processing finds its inputs, and what it does before `compute_segments`."""

    class_field: str  # (B, Q, classes + 1) logits, the last column "no object"
    mask_field: str  # (B, Q, h, w) mask logits
    mask_size: tuple[int, int] | None  # masks are first resized to this (Mask2Former's 384 x 384)


_MASK_CLASSIFICATION = _PanopticRecipe("class_queries_logits", "masks_queries_logits", None)
_DETR = _PanopticRecipe("logits", "pred_masks", None)
# Processors whose `post_process_panoptic_segmentation` is remove_low_and_no_objects + compute_segments
# (the code shared by the DETR and MaskFormer families), after the recipe's own first steps.
_PANOPTIC_RECIPES = {
    "Mask2FormerImageProcessor": _PanopticRecipe("class_queries_logits", "masks_queries_logits", (384, 384)),
    "MaskFormerImageProcessor": _MASK_CLASSIFICATION,
    "DetrImageProcessor": _DETR,
    "ConditionalDetrImageProcessor": _DETR,
}


@dataclass(frozen=True)
class PanopticResult:
    segmentation: torch.Tensor  # (H, W) int32 segment ids, 0 where no segment won
    segments: list[dict[str, Any]]  # {"id", "label_id", "was_fused", "score"} as the processor's segments_info


def _processor_name(image_processor: Any) -> str:
    # The PIL-backed twins (`...ImageProcessorPil`) share the post-processing code of the torchvision ones.
    return type(image_processor).__name__.removesuffix("Pil").removesuffix("Fast")


def semantic_map(image_processor: Any, outputs: Any, size: tuple[int, int]) -> torch.Tensor | None:
    """(H, W) int64 class ids equal to `post_process_semantic_segmentation(outputs, target_sizes=[size])[0]`."""
    if _processor_name(image_processor) not in _SEMANTIC_UPSAMPLE_LAST:
        return None
    try:
        # The processor's own steps up to its final resize: the score map at model resolution.
        [result] = image_processor.post_process_semantic_segmentation(outputs, target_sizes=None,
                                                                      return_segmentation_scores=True)
    except TypeError:  # an older transformers without return_segmentation_scores
        return None
    scores = result["segmentation_scores"]
    if scores is None:
        return None
    return upsampled_argmax(scores, size)[1]


def panoptic_map(image_processor: Any, outputs: Any, size: tuple[int, int],
                 label_ids_to_fuse: frozenset[int] = frozenset()) -> PanopticResult | None:
    """Equal to `post_process_panoptic_segmentation(outputs, label_ids_to_fuse=..., target_sizes=[size])[0]`
    (its -1 "nothing found" map given as 0), with the processor's default thresholds."""
    recipe = _PANOPTIC_RECIPES.get(_processor_name(image_processor))
    if recipe is None:
        return None
    defaults = _panoptic_defaults(image_processor)
    class_logits, mask_logits = outputs[recipe.class_field], outputs[recipe.mask_field]
    if recipe.mask_size is not None:
        mask_logits = torch.nn.functional.interpolate(mask_logits, size=recipe.mask_size, mode="bilinear",
                                                      align_corners=False)
    num_labels = class_logits.shape[-1] - 1
    mask_probs = mask_logits.sigmoid()[0]  # (Q, h, w)
    scores, labels = torch.nn.functional.softmax(class_logits, dim=-1).max(-1)
    scores, labels = scores[0], labels[0]
    keep = labels.ne(num_labels) & (scores > defaults["threshold"])  # remove_low_and_no_objects
    mask_probs, scores, labels = mask_probs[keep], scores[keep], labels[keep]
    if mask_probs.shape[0] == 0:
        return PanopticResult(torch.zeros(size, dtype=torch.int32), [])
    return _compute_segments(mask_probs, scores, labels, size, defaults["mask_threshold"],
                             defaults["overlap_mask_area_threshold"], label_ids_to_fuse)


def _panoptic_defaults(image_processor: Any) -> dict[str, float]:
    parameters = inspect.signature(image_processor.post_process_panoptic_segmentation).parameters
    return {name: float(parameters[name].default)
            for name in ("threshold", "mask_threshold", "overlap_mask_area_threshold")}


def _compute_segments(mask_probs: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, size: tuple[int, int],
                      mask_threshold: float, overlap_threshold: float,
                      label_ids_to_fuse: frozenset[int]) -> PanopticResult:
    """transformers' `compute_segments` with the full-size (Q, H, W) masks never held at once: each query's
    upsampled, score-weighted mask is counted against `mask_threshold` as it passes, and the winner map
    (argmax over queries) is all that stays."""
    original_areas = torch.zeros(mask_probs.shape[0], dtype=torch.int64, device=mask_probs.device)
    above = torch.empty(size, dtype=torch.bool, device=mask_probs.device)

    def weigh_and_count(start: int, group: torch.Tensor) -> torch.Tensor:
        group *= scores[start: start + group.shape[0]].view(-1, 1, 1)  # as the processor's in-place weighting
        for offset, plane in enumerate(group):  # plane by plane: a bool sum over the group would go via int64
            original_areas[start + offset] = torch.count_nonzero(torch.ge(plane, mask_threshold, out=above))
        return group

    _, mask_labels = upsampled_argmax(mask_probs, size, weigh_and_count)
    mask_labels = mask_labels.view(-1).int()  # index_select takes int32 indices: a quarter of int64's memory
    winning_areas = torch.bincount(mask_labels, minlength=mask_probs.shape[0])
    segment_ids = torch.zeros(mask_probs.shape[0] + 1, dtype=torch.int32, device=mask_labels.device)
    segments: list[dict[str, Any]] = []
    current_id = 0
    fused: dict[int, int] = {}
    for k in range(labels.shape[0]):
        label = int(labels[k].item())
        mask_area, original_area = winning_areas[k], original_areas[k]
        # check_segment_validity: the winning area over the thresholded area, as a tensor division (float32)
        if not (mask_area > 0 and original_area > 0 and (mask_area / original_area).item() > overlap_threshold):
            continue
        current_id = fused[label] if label in fused else current_id + 1
        segment_ids[k] = current_id
        segments.append({"id": current_id, "label_id": label, "was_fused": label in label_ids_to_fuse,
                         "score": round(scores[k].item(), 6)})
        if label in label_ids_to_fuse:
            fused[label] = current_id
    return PanopticResult(segment_ids.index_select(0, mask_labels).view(size), segments)
