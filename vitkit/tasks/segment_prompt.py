"""`vitkit segment --mode prompt`: Segment Anything masks for points and a box given on the command line.

One prompt per run: every `--point` and the `--box` together, as SAM takes them (one prompt of several
points and at most one box, which yields one mask), applied to every image. The image embedding is
computed once per image; the prompt is decoded against it. Coordinates are pixels of the displayed
(EXIF-oriented) image at full resolution; a prompt outside an image makes that image's error record.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from vitkit.errors import InputError, UsageError
from vitkit.inputs.data import ImageMeta, Sample
from vitkit.models.backends.hf import HfAssets
from vitkit.models.backends.sam import (DecodedMasks, SamImageInputs, best_masks, decode_prompts, full_size_masks,
                                        image_embeddings, is_sam_model, mask_post_processor, sam_draft_size,
                                        scale_coordinates)
from vitkit.models.loading import LoadedModel
from vitkit.outputs.files import OutputPlanner
from vitkit.tasks.base import TaskResult
from vitkit.tasks.segment import Segmentation, SegmentOptions, SegmentTask

FOREGROUND, BACKGROUND = 1, 0


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    label: int = FOREGROUND


@dataclass(frozen=True)
class SamPrompt:
    points: tuple[Point, ...] = ()
    box: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1

    def __post_init__(self) -> None:
        if not self.points and self.box is None:
            raise UsageError("--mode prompt needs a prompt", hint="give --point X,Y[,LABEL] (repeatable) and/or "
                                                                  "--box X0,Y0,X1,Y1 in image pixels")

    def outside(self, width: int, height: int) -> str | None:
        """Why this prompt does not fit a width x height image, or None when it does (edges included)."""
        for point in self.points:
            if not (0 <= point.x <= width and 0 <= point.y <= height):
                return f"prompt point {point.x:g},{point.y:g} lies outside the {width}x{height} image"
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            if not (0 <= x0 and 0 <= y0 and x1 <= width and y1 <= height):
                return f"prompt box {x0:g},{y0:g},{x1:g},{y1:g} reaches outside the {width}x{height} image"
        return None


def _numbers(text: str, option: str, counts: tuple[int, ...]) -> list[float]:
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in counts or not all(math.isfinite(v) for v in values):
        shapes = {2: "X,Y", 3: "X,Y,LABEL", 4: "X0,Y0,X1,Y1"}
        raise UsageError(f"{option} {text!r} is not {' or '.join(shapes[c] for c in counts)}",
                         hint=f"e.g. {option} {'320,240' if option == '--point' else '10,20,300,400'}")
    return values


def parse_point(text: str) -> Point:
    values = _numbers(text, "--point", (2, 3))
    label = FOREGROUND if len(values) == 2 else values[2]
    if label not in (FOREGROUND, BACKGROUND):
        raise UsageError(f"--point {text!r}: the label must be 1 (foreground) or 0 (background)")
    return Point(values[0], values[1], int(label))


def parse_box(text: str) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = _numbers(text, "--box", (4,))
    if x1 <= x0 or y1 <= y0:
        raise UsageError(f"--box {text!r} is empty", hint="give X0,Y0,X1,Y1 with X1 > X0 and Y1 > Y0")
    return x0, y0, x1, y1


def build_prompt(points: Sequence[str | Point] = (), box: str | Sequence[float] | None = None) -> SamPrompt:
    parsed = tuple(p if isinstance(p, Point) else parse_point(p) for p in points)
    if box is not None and not isinstance(box, str):
        box = ",".join(str(v) for v in box)
    return SamPrompt(parsed, parse_box(box) if box is not None else None)


@dataclass(frozen=True)
class PromptPreprocess:
    """Runs in dataloader workers: the image as SAM's processor prepares it, and the prompt scaled to it."""

    image_inputs: SamImageInputs
    prompt: SamPrompt

    def __call__(self, image: Any, meta: ImageMeta) -> dict[str, torch.Tensor]:
        if (reason := self.prompt.outside(meta.width, meta.height)) is not None:
            raise InputError(reason, kind="prompt outside image")
        inputs = self.image_inputs(image)
        original, reshaped = (meta.height, meta.width), inputs["reshaped_input_size"].tolist()
        if self.prompt.points:  # (1, P, 2) float64 and (1, P), as SamProcessor gives them for one prompt
            coords = [(p.x, p.y) for p in self.prompt.points]
            inputs["input_points"] = torch.from_numpy(scale_coordinates(np.array(coords), original, reshaped))[None]
            inputs["input_labels"] = torch.tensor([[p.label for p in self.prompt.points]])
        if self.prompt.box is not None:  # (1, 4)
            box = np.array(self.prompt.box, dtype=np.float32).reshape(2, 2)
            inputs["input_boxes"] = torch.from_numpy(scale_coordinates(box, original, reshaped).reshape(1, 4))
        return inputs


class PromptSegmentTask(SegmentTask):
    """SegmentTask's records and files (`_fields`, `_files`, its layout) for SAM masks: id 0 is no segment,
    the mask(s) are numbered from 1, `score` is SAM's predicted IoU and `label` names the multimask output.
    SegmentTask's own __init__ is not run: it looks for a segmentation head and post-processing SAM lacks."""

    def __init__(self, model: LoadedModel, options: SegmentOptions, prompt: SamPrompt, all_masks: bool = False,
                 inputs: Sequence[str] = ()) -> None:
        if not isinstance(model.assets, HfAssets) or not is_sam_model(model.module):
            raise UsageError(f"model {model.spec.id!r} is not a Segment Anything model",
                             hint="--mode prompt needs a SAM checkpoint, e.g. --model sam-b")
        self.model, self.options, self.prompt, self.all_masks = model, options, prompt, all_masks
        self.processor = model.assets.processor
        self.image_processor = model.assets.image_processor
        self.post_processor = mask_post_processor(self.processor)
        self.id2label: dict[int, str] = {}
        self.preprocess = PromptPreprocess(SamImageInputs(self.image_processor), prompt)
        self.collate_inputs = None  # equal shapes: torch's default stacking
        self.draft_size = sam_draft_size(self.image_processor)
        self.planner = OutputPlanner(options.out_dir, inputs) if options.out_dir else None

    def forward(self, inputs: dict[str, torch.Tensor]) -> tuple[DecodedMasks, torch.Tensor]:
        embeddings = image_embeddings(self.model.module, inputs["pixel_values"])  # (B, C, s, s)
        points, labels, boxes = inputs.get("input_points"), inputs.get("input_labels"), inputs.get("input_boxes")
        decoded = decode_prompts(self.model.module, embeddings, points, labels, boxes)
        return decoded, inputs["reshaped_input_size"]

    def postprocess(self, outputs: tuple[DecodedMasks, torch.Tensor], samples: Sequence[Sample]) -> list[TaskResult]:
        decoded, reshaped = outputs
        records = []
        for index, sample in enumerate(samples):
            size = (sample.height or 0, sample.width or 0)
            low_res, iou = decoded.low_res[index].float(), decoded.iou[index].float()  # (1, K, m, m), (1, K)
            if self.all_masks:
                chosen = torch.arange(iou.shape[-1])
                scores = iou[0]
            else:
                low_res, scores, chosen = best_masks(low_res, iou)
            [masks] = full_size_masks(self.post_processor, low_res, size, reshaped[index].tolist())  # (K', H, W)
            records.append(self._fields(_label_map(masks, scores, chosen), sample))
        return records


def _label_map(masks: torch.Tensor, scores: torch.Tensor, chosen: torch.Tensor) -> Segmentation:
    """(K, H, W) bool masks -> ids 1..K, 0 where none. Overlapping masks (--all-masks): the larger ones
    are painted first, so each keeps the part no smaller mask covers."""
    label_map = np.zeros(masks.shape[-2:], dtype=np.int32)
    order = sorted(range(masks.shape[0]), key=lambda k: -int(masks[k].sum()))
    for k in order:
        label_map[masks[k].numpy()] = k + 1
    labels = {k + 1: (f"mask {int(chosen[k])}", float(scores[k])) for k in range(masks.shape[0])}
    return Segmentation(label_map, labels, 0, masks.shape[0])


__all__ = ["PromptSegmentTask", "SamPrompt", "Point", "build_prompt", "parse_box", "parse_point"]
