"""transformers pose estimation (ViTPose): keypoint names, the skeleton to draw, and one model call
for every person crop of a batch, each crop made and read back by the checkpoint's own processor.

ViTPose is top-down: the processor cuts each person box out of the image with an affine warp to the
model's input size (256x192 for the COCO checkpoints; the box is padded by 1.25 and widened to that
aspect ratio), and `post_process_pose_estimation` maps heatmap peaks back to image pixels through
the same box. Boxes travel in COCO's `[x, y, width, height]`, as both of its calls expect.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from vitkit.models.backends.hf import id2label_names

# COCO's 17 person keypoints, in the dataset's order (its person category's `keypoints`).
COCO_KEYPOINTS = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                  "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
                  "right_knee", "left_ankle", "right_ankle")
# COCO's person `skeleton`: 19 limbs as pairs of keypoint indices (the dataset's are 1-based).
COCO_SKELETON = tuple((a - 1, b - 1) for a, b in (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9), (8, 10), (9, 11),
    (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7)))
# The COCO expert of a ViTPose+ (mixture-of-experts) backbone: its `dataset_index` for COCO keypoints.
COCO_DATASET_INDEX = 0


def is_pose_model(module: Any) -> bool:
    return type(module).__name__.endswith("ForPoseEstimation")


def keypoint_names(config: Any) -> tuple[str, ...]:
    """The checkpoint's keypoints in heatmap order: its config's id2label; COCO's names for a 17-keypoint
    checkpoint that names none (transformers' LABEL_n placeholders), else keypoint_n."""
    count = int(getattr(config, "num_labels", 0) or len(getattr(config, "id2label", {}) or {}))
    names = id2label_names(getattr(config, "id2label", None) or {})
    if names and len(names) == count:
        return names
    return COCO_KEYPOINTS if count == len(COCO_KEYPOINTS) else tuple(f"keypoint_{i}" for i in range(count))


def skeleton_for(config: Any, names: Sequence[str]) -> tuple[tuple[int, int], ...]:
    """Limbs to draw. transformers' ViTPose configs carry no skeleton, so a config's own `skeleton`
    (pairs of 0-based indices) is used where one exists, else COCO's for a 17-keypoint checkpoint,
    else none (keypoints only)."""
    own = getattr(config, "skeleton", None)
    if own:
        return tuple((int(a), int(b)) for a, b in own)
    return COCO_SKELETON if len(names) == len(COCO_KEYPOINTS) else ()


def expert_count(config: Any) -> int:
    backbone = getattr(config, "backbone_config", None)
    return int(getattr(backbone, "num_experts", 1) or 1)


def crop_heatmaps(module: torch.nn.Module, image_processor: Any, images: Sequence[torch.Tensor],
                  boxes: Sequence[Sequence[Sequence[float]]]) -> torch.Tensor:
    """One forward for every box of every image: images (3, H, W) uint8 as displayed, boxes per image in
    COCO xywh (every image with at least one). -> (P, K, h, w) heatmaps, P = all boxes in order."""
    pixels = image_processor(images=list(images), boxes=[list(b) for b in boxes], return_tensors="pt")["pixel_values"]
    parameter = next(module.parameters())
    pixels = pixels.to(parameter.device)  # (P, 3, 256, 192)
    extra = {}
    if expert_count(module.config) > 1:  # ViTPose+: every crop goes to the COCO expert
        extra["dataset_index"] = torch.full((pixels.shape[0],), COCO_DATASET_INDEX, device=pixels.device)
    return module(pixel_values=pixels, **extra).heatmaps


def post_process_pose(image_processor: Any, heatmaps: torch.Tensor,
                      boxes: Sequence[Sequence[Sequence[float]]]) -> list[list[dict[str, torch.Tensor]]]:
    """The processor's own read-out: per image, per box, `keypoints` (K, 2) in image pixels and `scores` (K,)."""
    from transformers.models.vitpose.modeling_vitpose import VitPoseEstimatorOutput

    outputs = VitPoseEstimatorOutput(heatmaps=heatmaps.float().cpu())
    return image_processor.post_process_pose_estimation(outputs, boxes=[list(b) for b in boxes])
