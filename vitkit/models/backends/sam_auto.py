"""Segment Anything's automatic mask generation, as transformers' `mask-generation` pipeline does it,
with the memory of a 12 MP photo bounded.

The pipeline upsamples every point batch's masks to the original size at once, float32 (64 points x 3
masks x 12 MP = 9 GB), before filtering them. Here the same steps run point by point, and only for the
points with a mask that passes the predicted-IoU threshold (a per-mask number known at low resolution,
so skipping the others changes nothing): the processor's own `post_process_masks` and `filter_masks`
on one point's three masks (its upsampling kernel gives the same values for one point as for a batch
of them; for one mask alone on one thread it does not), then the processor's box NMS. Masks wait as
the run-length encodings `filter_masks` makes and are decoded one at a time into the label map.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class Thresholds:
    pred_iou: float  # keep masks whose predicted IoU is above this (0 or less: no filter, as SAM's)
    stability: float  # keep masks whose stability score is above this (0 or less: no filter)
    box_nms: float  # drop a mask whose box overlaps a better-scored kept mask's by more than this IoU
    mask: float = 0.0  # logit above which a pixel is in the mask
    stability_offset: float = 1.0  # the logit shift of the stability score's two cut-offs


@dataclass(frozen=True)
class LowResMasks:
    """One image's masks that may pass, before upsampling: the points with a mask above the IoU threshold."""

    masks: torch.Tensor  # (K, 3, h, w) logits, all three multimask outputs of each kept point
    iou_scores: torch.Tensor  # (K, 3) predicted IoU


@dataclass(frozen=True)
class Candidates:
    """Masks that passed the filters, in point order then multimask order."""

    rles: list[dict[str, Any]]  # column-major run lengths, zeros first, as `filter_masks` encodes them
    scores: torch.Tensor  # (M,) predicted IoU
    boxes: torch.Tensor  # (M, 4) x0, y0, x1, y1 inclusive


def target_size(image_processor: Any) -> int:
    """The side the processor fits an image's long side into (the pipeline's own lookup)."""
    size = image_processor.size
    get = size.get if isinstance(size, dict) else (lambda key: getattr(size, key, None))
    return int(get("longest_edge") or get("height"))


def point_grid(image_processor: Any, image: Any, points_per_side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The processor's grid of `points_per_side`² points over the whole image, in the model's input
    coordinates: points (N, 1, 2) and labels (N, 1), all foreground."""
    _, points, _, labels = image_processor.generate_crop_boxes(
        image, target_size(image_processor), crop_n_layers=0, points_per_crop=points_per_side)
    return points[0], labels[0]  # (1, N, 1, 2) -> (N, 1, 2); (1, N, 1) -> (N, 1)


def decode_points(model: torch.nn.Module, embeddings: torch.Tensor, points: torch.Tensor, labels: torch.Tensor,
                  points_per_batch: int, pred_iou_threshold: float) -> LowResMasks:
    """Every grid point decoded against one image's embeddings (1, C, h, w), `points_per_batch` at a time;
    only points with at least one mask above the IoU threshold are kept."""
    kept_masks, kept_scores = [], []
    for start in range(0, points.shape[0], points_per_batch):
        outputs = model(image_embeddings=embeddings, input_points=points[None, start: start + points_per_batch],
                        input_labels=labels[None, start: start + points_per_batch], multimask_output=True)
        masks, scores = outputs.pred_masks[0], outputs.iou_scores[0]  # (P, 3, h, w), (P, 3)
        if pred_iou_threshold > 0.0:
            passing = (scores > pred_iou_threshold).any(dim=1)
            masks, scores = masks[passing], scores[passing]
        kept_masks.append(masks)
        kept_scores.append(scores)
    return LowResMasks(torch.cat(kept_masks), torch.cat(kept_scores))


def filter_candidates(image_processor: Any, low_res: LowResMasks, original_size: tuple[int, int],
                      reshaped_size: tuple[int, int], thresholds: Thresholds) -> Candidates:
    """The processor's upsampling and filters, one point's three masks at a time: (3, H, W) float32 at
    most, never the point batch's."""
    height, width = original_size
    whole_image = torch.tensor([0.0, 0.0, float(width), float(height)])
    rles: list[dict[str, Any]] = []
    scores, boxes = [], []
    for point in range(low_res.masks.shape[0]):
        [upsampled] = image_processor.post_process_masks(
            [low_res.masks[point: point + 1].float()], [list(original_size)], [list(reshaped_size)],
            mask_threshold=thresholds.mask, binarize=False)  # (1, 3, H, W)
        point_rles, point_scores, point_boxes = image_processor.filter_masks(
            upsampled, low_res.iou_scores[point: point + 1].float(), original_size, whole_image,
            thresholds.pred_iou, thresholds.stability, thresholds.mask, thresholds.stability_offset)
        del upsampled
        rles += point_rles
        scores.append(point_scores.cpu())
        boxes.append(point_boxes.cpu())
    if not rles:
        return Candidates([], torch.zeros(0), torch.zeros(0, 4))
    return Candidates(rles, torch.cat(scores), torch.cat(boxes))


def suppress(candidates: Candidates, box_nms_threshold: float) -> list[int]:
    """Indices of the masks box NMS keeps, best predicted IoU first: the call the processor's
    `post_process_for_mask_generation` makes, without its decoding every kept mask at full size."""
    from torchvision.ops.boxes import batched_nms

    if not candidates.rles:
        return []
    keep = batched_nms(boxes=candidates.boxes.float(), scores=candidates.scores,
                       idxs=torch.zeros(candidates.boxes.shape[0]), iou_threshold=box_nms_threshold)
    return keep.tolist()


def rle_area(rle: dict[str, Any]) -> int:
    return int(sum(rle["counts"][1::2]))


def paint(rles: list[dict[str, Any]], ids: list[int], size: tuple[int, int]) -> np.ndarray:
    """An (H, W) int32 label map with rles[i]'s pixels set to ids[i], later masks over earlier ones; 0
    where no mask is."""
    height, width = size
    # Run lengths count down columns: a (W, H) C-order canvas is that order, flat.
    canvas = np.zeros((width, height), dtype=np.int32)
    flat = canvas.reshape(-1)
    for rle, value in zip(rles, ids):
        counts = np.asarray(rle["counts"], dtype=np.int64)
        ends = np.cumsum(counts)
        for start, stop in zip((ends - counts)[1::2].tolist(), ends[1::2].tolist()):
            flat[start:stop] = value
    return np.ascontiguousarray(canvas.T)
