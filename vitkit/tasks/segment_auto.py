"""`vitkit segment --mode auto`: Segment Anything's automatic masks over a grid of point prompts, as
panoptic-style segments numbered from 1 (0: no segment).

Each image's embedding is computed once and every grid point is decoded against it. Ids follow the
predicted IoU, best first; where masks overlap, larger masks are painted first so smaller ones stay
visible on top; a mask wholly covered by smaller ones (or smaller than --min-area where visible) gets
no id. A segment's area and box are its visible pixels, as in the mask PNG.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from vitkit.errors import UsageError
from vitkit.inputs.data import ImageMeta, Sample
from vitkit.models.backends import sam_auto
from vitkit.models.backends.hf import HfAssets
from vitkit.models.backends.sam import check_not_too_thin
from vitkit.models.loading import LoadedModel
from vitkit.outputs.files import OutputPlanner
from vitkit.tasks.base import TaskResult
from vitkit.tasks.segment import Segmentation, SegmentOptions, SegmentTask

SEGMENT_LABEL = None  # SAM's masks have no class: records say label null


@dataclass(frozen=True)
class AutoMaskOptions:
    """SAM's automatic mask generator's settings, with its defaults."""

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_threshold: float = 0.88
    stability_score_threshold: float = 0.95
    box_nms_threshold: float = 0.7
    crop_layers: int = 0

    def __post_init__(self) -> None:
        if self.points_per_side < 1:
            raise UsageError(f"--points-per-side must be 1 or more, not {self.points_per_side}")
        if self.points_per_batch < 1:
            raise UsageError(f"--points-per-batch must be 1 or more, not {self.points_per_batch}")
        if not 0.0 <= self.box_nms_threshold <= 1.0:
            raise UsageError(f"--box-nms-threshold must be between 0 and 1, not {self.box_nms_threshold}")
        if self.crop_layers:
            raise UsageError("--crop-layers is not supported yet: masks come from the whole image only",
                             hint="leave out --crop-layers, or raise --points-per-side for smaller masks")

    @property
    def thresholds(self) -> sam_auto.Thresholds:
        return sam_auto.Thresholds(self.pred_iou_threshold, self.stability_score_threshold, self.box_nms_threshold)


@dataclass(frozen=True)
class GridPreprocess:
    """Runs in dataloader workers: the processor's resize and pad, and its point grid over the image."""

    image_processor: Any
    points_per_side: int

    def __call__(self, image: Any, meta: ImageMeta) -> dict[str, torch.Tensor]:
        check_not_too_thin(self.image_processor, image.size)
        encoded = self.image_processor(images=image, return_tensors="pt")
        points, labels = sam_auto.point_grid(self.image_processor, image, self.points_per_side)
        return {"pixel_values": encoded["pixel_values"][0],  # (3, S, S)
                "original_sizes": encoded["original_sizes"][0], "reshaped_input_sizes": encoded["reshaped_input_sizes"][0],
                "input_points": points, "input_labels": labels}  # (N, 1, 2), (N, 1)


@dataclass(frozen=True)
class AutoForwarded:
    low_res: list[sam_auto.LowResMasks]  # per image
    original_sizes: torch.Tensor  # (B, 2) height, width of the image the processor saw
    reshaped_input_sizes: torch.Tensor  # (B, 2) its size inside the padded model input


class SegmentAutoTask(SegmentTask):
    """SegmentTask's records and files, with SAM's own inputs, model calls and mask generation."""

    def __init__(self, model: LoadedModel, options: SegmentOptions, auto: AutoMaskOptions = AutoMaskOptions(),
                 inputs: Sequence[str] = ()) -> None:
        module = model.module
        processor = model.assets.processor if isinstance(model.assets, HfAssets) else None
        image_processor = getattr(processor, "image_processor", processor)
        if not (hasattr(module, "get_image_embeddings") and hasattr(image_processor, "filter_masks")):
            raise UsageError(f"model {model.spec.id!r} ({type(module).__name__}) cannot do auto segmentation",
                             hint="automatic masks need a Segment Anything checkpoint, e.g. --model sam-b")
        self.model, self.options, self.auto = model, options, auto
        self.processor, self.image_processor = processor, image_processor
        self.id2label: dict[int, str] = {}
        self.preprocess = GridPreprocess(image_processor, auto.points_per_side)
        self.collate_inputs = None  # equal shapes: torch's default stacking
        self.draft_size = None  # SAM sees the long side at 1024 px: a draft decode would cost detail
        self.planner = OutputPlanner(options.out_dir, inputs) if options.out_dir else None

    def forward(self, inputs: dict[str, torch.Tensor]) -> AutoForwarded:
        module = self.model.module
        embeddings = module.get_image_embeddings(inputs["pixel_values"])  # (B, C, h, w), once per image
        low_res = [sam_auto.decode_points(module, embeddings[index: index + 1], inputs["input_points"][index],
                                          inputs["input_labels"][index], self.auto.points_per_batch,
                                          self.auto.pred_iou_threshold)
                   for index in range(embeddings.shape[0])]
        return AutoForwarded(low_res, inputs["original_sizes"], inputs["reshaped_input_sizes"])

    def postprocess(self, forwarded: AutoForwarded, samples: Sequence[Sample]) -> list[TaskResult]:
        records = []
        for index, sample in enumerate(samples):
            size = (int(forwarded.original_sizes[index][0]), int(forwarded.original_sizes[index][1]))
            reshaped = (int(forwarded.reshaped_input_sizes[index][0]), int(forwarded.reshaped_input_sizes[index][1]))
            candidates = sam_auto.filter_candidates(self.image_processor, forwarded.low_res[index], size, reshaped,
                                                    self.auto.thresholds)
            records.append(self._fields(self._segmentation(candidates, size), sample))
        return records

    def _segmentation(self, candidates: sam_auto.Candidates, size: tuple[int, int]) -> Segmentation:
        kept = sam_auto.suppress(candidates, self.auto.box_nms_threshold)  # best predicted IoU first
        rles = [candidates.rles[i] for i in kept]
        # Larger masks first (stable: equal areas keep the score order), so smaller ones end on top.
        order = sorted(range(len(rles)), key=lambda rank: -sam_auto.rle_area(rles[rank]))
        label_map = sam_auto.paint([rles[rank] for rank in order], [rank + 1 for rank in order], size)
        visible = np.bincount(label_map.ravel(), minlength=len(rles) + 1)[1:]
        shown = np.flatnonzero(visible >= max(1, self.options.min_area))  # ranks, in score order
        lookup = np.zeros(len(rles) + 1, dtype=np.int32)
        lookup[shown + 1] = np.arange(1, len(shown) + 1, dtype=np.int32)
        labels = {new_id: (SEGMENT_LABEL, float(candidates.scores[kept[rank]]))
                  for new_id, rank in enumerate(shown.tolist(), 1)}
        return Segmentation(lookup[label_map], labels, 0, max(len(shown), 1))

    def _label(self, class_id: int) -> Any:
        return SEGMENT_LABEL
