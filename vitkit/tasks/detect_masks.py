"""`vitkit detect --masks`: every detected box prompts Segment Anything for its mask (box-to-mask chaining).

Per batch, in the task's forward: the detector, its post-processing (the boxes the records keep), one
SAM image embedding per image, and one decoder call per image with all of that image's boxes. Each
box gets SAM's best multimask output by predicted IoU, the same mask `vitkit segment --mode prompt
--box` gives for it. Masks are brought to full size a few at a time and run-length encoded at once
(COCO compressed RLE): a record never holds more than a handful of full-size masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import default_collate

from vitkit.errors import UsageError
from vitkit.inputs.data import Collate, ImageMeta, Preprocess
from vitkit.models.backends.hf import HfAssets
from vitkit.models.backends.sam import (SamImageInputs, best_masks, decode_prompts, full_size_masks, image_embeddings,
                                        is_sam_model, mask_post_processor, scale_coordinates)
from vitkit.models.loading import LoadedModel
from vitkit.outputs.rle import encode_mask


@dataclass(frozen=True)
class WithSamInputs:
    """Runs in dataloader workers: the detector's inputs, SAM's, and the displayed image's (H, W)."""

    detector: Preprocess
    sam: SamImageInputs

    def __call__(self, image: Any, meta: ImageMeta) -> dict[str, Any]:
        return {"detector": self.detector(image, meta), "sam": self.sam(image),
                "target_size": torch.tensor([meta.height, meta.width])}


@dataclass(frozen=True)
class CollateWithSam:
    detector: Collate | None

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        collate = self.detector or default_collate
        return {"detector": collate([item["detector"] for item in items]),
                "sam": default_collate([item["sam"] for item in items]),
                "target_size": torch.stack([item["target_size"] for item in items])}


@dataclass(frozen=True)
class MaskedDetections:
    found: list[list[dict[str, Any]]]  # per image, the records' detections (boxes in original pixels)
    low_res: list[torch.Tensor | None]  # per image, (N, 1, m, m) the chosen mask logits of its N boxes
    reshaped: torch.Tensor  # (B, 2) each image's resized (h, w) inside SAM's padded input


class BoxMasker:
    """SAM driven by boxes, for the detect task."""

    def __init__(self, model: LoadedModel) -> None:
        if not isinstance(model.assets, HfAssets) or not is_sam_model(model.module):
            raise UsageError(f"mask model {model.spec.id!r} is not a Segment Anything model",
                             hint="--mask-model needs a SAM checkpoint, e.g. sam-b")
        self.model = model
        self.image_inputs = SamImageInputs(model.assets.image_processor)
        self.post_processor = mask_post_processor(model.assets.processor)

    def low_res_masks(self, sam_inputs: dict[str, torch.Tensor], found: Sequence[list[dict[str, Any]]],
                      sizes: Sequence[tuple[int, int]]) -> MaskedDetections:
        module = self.model.module
        embeddings = image_embeddings(module, sam_inputs["pixel_values"])  # (B, C, s, s)
        reshaped = sam_inputs["reshaped_input_size"]
        chosen: list[torch.Tensor | None] = []
        for index, detections in enumerate(found):
            if not detections:
                chosen.append(None)
                continue
            boxes = np.array([d["box"] for d in detections], dtype=np.float32).reshape(-1, 2, 2)
            scaled = scale_coordinates(boxes, sizes[index], reshaped[index].tolist()).reshape(1, -1, 4)
            decoded = decode_prompts(module, embeddings[index: index + 1],
                                     boxes=torch.from_numpy(scaled).to(embeddings.device))
            low_res, _, _ = best_masks(decoded.low_res[0], decoded.iou[0])  # (N, 1, m, m)
            chosen.append(low_res)
        return MaskedDetections(list(found), chosen, reshaped)

    def attach_masks(self, detections: list[dict[str, Any]], low_res: torch.Tensor | None, size: tuple[int, int],
                     reshaped: Sequence[int]) -> None:
        """Each detection's `mask`: its full-size mask as COCO compressed RLE."""
        if low_res is None:
            return
        masks = full_size_masks(self.post_processor, low_res, size, reshaped)
        for detection, mask in zip(detections, masks):
            detection["mask"] = encode_mask(mask[0].numpy())
