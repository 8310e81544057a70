"""transformers depth estimation (Depth Anything, DPT): what a checkpoint's values mean, and batching
images whose processed sizes differ without changing any image's result.

The DPT image processor (Depth Anything uses it too) can keep the aspect ratio and round each side
to a multiple of the patch size, so a batch holds several input sizes. Padding them to one size would
change every result (the ViT attends to the padding), so the batch travels padded to its largest
size, as the runner's contract wants, and the model runs once per distinct size on the images of
that size cropped back to it: each image gets exactly what it would alone (up to the float rounding
of batched matrix products, as in every command).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from vitkit.errors import UsageError

RELATIVE, METRIC = "relative", "metric"
# Relative models predict affine-invariant inverse depth (disparity): larger values are nearer, with
# an unknown scale and shift per image, so the values compare only within one image.
RELATIVE_UNIT = "relative (larger is nearer)"
METRIC_UNIT = "metres"
# Checkpoints whose config does not say what they predict, by `model_type`: the DPT depth checkpoints
# published for transformers (Intel/dpt-large, dpt-hybrid-midas, the dpt-beit and dpt-swinv2 ones) are
# MiDaS models trained for relative inverse depth. Other families without the field (GLPN, ZoeDepth,
# Depth Pro) are refused rather than guessed, and their processors' post-processing takes other arguments.
_KIND_WITHOUT_FIELD = {"dpt": RELATIVE}
# ... but only with MiDaS's backbones (its own ViT: no backbone config; BiT for hybrid; BEiT; Swin V2).
# Meta's DPT heads on DINOv2 (facebook/dpt-dinov2-*-kitti|nyu) share `model_type` "dpt" and predict metres.
_MIDAS_BACKBONES = {None, "bit", "beit", "swinv2"}


@dataclass(frozen=True)
class DepthKind:
    kind: str  # relative | metric
    unit: str  # what the values are: RELATIVE_UNIT or METRIC_UNIT


def read_depth_kind(config: Any, model_id: str) -> DepthKind:
    """What the checkpoint's values mean, from its config: Depth Anything's `depth_estimation_type`
    (relative or metric; its metric heads output metres), else the family's known training target."""
    kind = getattr(config, "depth_estimation_type", None) or _KIND_WITHOUT_FIELD.get(getattr(config, "model_type", ""))
    backbone = getattr(getattr(config, "backbone_config", None), "model_type", None)
    if getattr(config, "model_type", "") == "dpt" and backbone not in _MIDAS_BACKBONES:
        kind = None  # a DPT head on another backbone: nothing in the config says relative or metric
    if kind == METRIC:
        return DepthKind(METRIC, METRIC_UNIT)
    if kind == RELATIVE:
        return DepthKind(RELATIVE, RELATIVE_UNIT)
    raise UsageError(
        f"model {model_id!r} ({getattr(config, 'model_type', '?')}) does not say whether its depth is relative or metric",
        hint="use a Depth Anything or DPT checkpoint, e.g. --model depth-anything-s (see `vitkit models list --task depth`)")


def is_depth_model(module: Any) -> bool:
    return type(module).__name__.endswith("ForDepthEstimation")


@dataclass(frozen=True)
class PadToLargest:
    """Collates processed images of any sizes: (B, 3, H, W) zero-padded bottom/right to the batch's
    largest, and (B, 2) the height and width each image really has. Picklable (dataloader workers)."""

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        pixels = [item["pixel_values"] for item in items]  # (3, h, w) each
        height, width = max(p.shape[-2] for p in pixels), max(p.shape[-1] for p in pixels)
        batch = pixels[0].new_zeros((len(pixels), pixels[0].shape[0], height, width))
        for index, image in enumerate(pixels):
            batch[index, :, : image.shape[-2], : image.shape[-1]] = image
        sizes = torch.tensor([tuple(p.shape[-2:]) for p in pixels], dtype=torch.long)
        return {"pixel_values": batch, "sizes": sizes}


def forward_by_size(module: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """One model call per distinct processed size, on those images alone, unpadded -> each image's
    predicted depth (h', w') in batch order (h', w': the head's output size for that input)."""
    pixels, sizes = inputs["pixel_values"], inputs["sizes"].tolist()
    depths: list[torch.Tensor | None] = [None] * len(sizes)
    for height, width in dict.fromkeys(map(tuple, sizes)):
        members = [i for i, size in enumerate(sizes) if tuple(size) == (height, width)]
        index = torch.tensor(members, device=pixels.device)
        members_pixels = pixels.index_select(0, index)[..., :height, :width].contiguous()  # (n, 3, h, w)
        predicted = module(pixel_values=members_pixels).predicted_depth
        for position, member in enumerate(members):
            depths[member] = predicted[position]  # (h', w')
    return [depth for depth in depths if depth is not None]


def post_process_depth(image_processor: Any, predicted: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The processor's own post-processing of one image's (h', w') prediction at `size` (H, W):
    bicubic to the displayed size, in float32. (H, W) float32."""
    from transformers.modeling_outputs import DepthEstimatorOutput

    outputs = DepthEstimatorOutput(predicted_depth=predicted[None].float())  # (1, h', w')
    [result] = image_processor.post_process_depth_estimation(outputs, target_sizes=[size])
    return result["predicted_depth"].reshape(size)  # its squeeze() would also drop a side of 1 pixel
