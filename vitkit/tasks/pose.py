"""Top-down pose estimation with a transformers ViTPose model and its own processor: person boxes from
vitkit's detector (or a boxes file, or the whole image), then every person crop of a batch through the
pose model in one call, and the processor's own read-out of the heatmaps in image pixels."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import default_collate

from vitkit.errors import InputError, UsageError
from vitkit.inputs.data import Collate, ImageMeta, Preprocess, Sample
from vitkit.inputs.decode import DEFAULT_MAX_PIXELS
from vitkit.models.backends.hf import HfAssets
from vitkit.models.backends.hf_pose import crop_heatmaps, is_pose_model, keypoint_names, post_process_pose, skeleton_for
from vitkit.models.loading import LoadedModel
from vitkit.outputs.artifacts import Artifacts, ImageFile
from vitkit.outputs.files import OutputPlanner
from vitkit.outputs.records import RecordLayout, explode_rows
from vitkit.tasks.base import TaskResult
from vitkit.tasks.pose_boxes import PersonBox, Unmatched

if TYPE_CHECKING:
    from vitkit.tasks.detect import DetectTask


def _describe(record: dict[str, Any]) -> str:
    people = record.get("people", [])
    return f"{len(people)} {'person' if len(people) == 1 else 'people'}"


POSE_LAYOUT = RecordLayout(
    csv_columns=("path", "width", "height", "rank", "box", "score", "keypoints", "error"),
    csv_rows=explode_rows("people", ("box", "score", "keypoints")),
    describe=_describe,
)


@dataclass(frozen=True)
class PoseOptions:
    kpt_threshold: float = 0.3  # keypoints scoring less are left out of drawings (never out of records)
    out_dir: str | None = None  # skeleton drawings go here when set
    max_pixels: int = DEFAULT_MAX_PIXELS  # for decoding the originals again to draw on


@dataclass(frozen=True)
class CropSource:
    """One image's pixels for the processor's crops, and its boxes when they are known before the model
    runs. Not a tensor container to the runner: it stays on the CPU, where the processor warps."""

    pixels: torch.Tensor  # (3, H, W) uint8, the displayed image at full size
    people: tuple[PersonBox, ...] | None  # None: the detector finds them in forward


@dataclass(frozen=True)
class CropSources:
    items: tuple[CropSource, ...]


@dataclass(frozen=True)
class PosePreprocess:
    """Runs in dataloader workers. `known`: each input's boxes (or why it has none); None with a detector."""

    detector: Preprocess | None
    known: Mapping[str, Sequence[PersonBox] | Unmatched] | None
    whole_image: bool

    def __call__(self, image: Any, meta: ImageMeta) -> dict[str, Any]:
        if image.size != (meta.width, meta.height):
            raise InputError("pose needs the image at its full size", kind="decode")
        pixels = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()
        people: tuple[PersonBox, ...] | None = None
        if self.whole_image:
            people = (PersonBox((0.0, 0.0, float(meta.width), float(meta.height)), None),)
        elif self.known is not None:
            found = self.known.get(meta.path, Unmatched("not in the --boxes-from file"))
            if isinstance(found, Unmatched):
                raise InputError(found.message, kind="no boxes")
            people = tuple(found)
        item = {"target_size": torch.tensor([meta.height, meta.width]), "crops": CropSource(pixels, people)}
        if self.detector is not None:
            item["detector"] = self.detector(image, meta)
        return item


@dataclass(frozen=True)
class PoseCollate:
    """`position` is each image's place in the batch: the runner slices tensors along dim 0 when it splits a
    batch after out-of-memory, and `position` tells forward which of the (unsliced) crop sources remain."""

    detector: Collate | None

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        batch = {"target_size": torch.stack([item["target_size"] for item in items]),
                 "position": torch.arange(len(items)),
                 "crops": CropSources(tuple(item["crops"] for item in items))}
        if "detector" in items[0]:
            batch["detector"] = (self.detector or default_collate)([item["detector"] for item in items])
        return batch


@dataclass(frozen=True)
class PoseOutputs:
    people: list[tuple[PersonBox, ...]]  # per image of the batch
    heatmaps: torch.Tensor | None  # (P, K, h, w) for all P people in order; None when there are none


class PoseTask:
    layout = POSE_LAYOUT

    def __init__(self, model: LoadedModel, options: PoseOptions, inputs: Sequence[str] = (),
                 detector: "DetectTask | None" = None, known: Mapping[str, Sequence[PersonBox] | Unmatched] | None = None,
                 whole_image: bool = False) -> None:
        """`detector`: a DetectTask keeping the person class (None with `known` or `whole_image`)."""
        if not isinstance(model.assets, HfAssets) or not is_pose_model(model.module):
            raise UsageError(f"model {model.spec.id!r} is not a transformers pose model",
                             hint="pick one from `vitkit models list --task pose`, e.g. --model vitpose-b")
        self.model = model
        self.options = options
        self.detector = detector
        self.image_processor = model.assets.image_processor
        self.names = keypoint_names(model.module.config)
        self.skeleton = skeleton_for(model.module.config, self.names)
        self.preprocess = PosePreprocess(detector.preprocess if detector else None, known, whole_image)
        self.collate_inputs = PoseCollate(detector.collate_inputs if detector else None)
        self.draft_size = None  # crops are cut from the full-size image, as the processor would
        self.planner = OutputPlanner(options.out_dir, inputs) if options.out_dir else None

    def forward(self, inputs: dict[str, Any]) -> PoseOutputs:
        sources = [inputs["crops"].items[p] for p in inputs["position"].tolist()]
        if self.detector is not None:
            people = self._detected(inputs["detector"], inputs["target_size"].tolist())
        else:
            people = [source.people or () for source in sources]
        with_people = [(source.pixels, found) for source, found in zip(sources, people) if found]
        if not with_people:
            return PoseOutputs(people, None)
        heatmaps = crop_heatmaps(self.model.module, self.image_processor, [pixels for pixels, _ in with_people],
                                 [[_coco_box(p.box) for p in found] for _, found in with_people])
        return PoseOutputs(people, heatmaps)

    def _detected(self, detector_inputs: Any, sizes: list[list[int]]) -> list[tuple[PersonBox, ...]]:
        """The detector's person boxes, through detect's own forward and post-processing."""
        samples = [Sample(index, "", width, height) for index, (height, width) in enumerate(sizes)]
        found = self.detector.postprocess(self.detector.forward(detector_inputs), samples)
        return [tuple(PersonBox(tuple(d["box"]), d["score"]) for d in fields["detections"]) for fields in found]

    def postprocess(self, outputs: PoseOutputs, samples: Sequence[Sample]) -> list[TaskResult]:
        with_people = [found for found in outputs.people if found]
        read = iter(post_process_pose(self.image_processor, outputs.heatmaps,
                                      [[_coco_box(p.box) for p in found] for found in with_people])
                    if outputs.heatmaps is not None else [])
        results: list[TaskResult] = []
        for sample, found in zip(samples, outputs.people, strict=True):
            poses = next(read) if found else []
            people = [self._person(person, pose) for person, pose in zip(found, poses, strict=True)]
            fields = {"people": people}
            if self.planner:
                results.append(Artifacts(fields, functools.partial(self._drawing, sample.path, people)))
            else:
                results.append(fields)
        return results

    def _person(self, person: PersonBox, pose: dict[str, torch.Tensor]) -> dict[str, Any]:
        points, scores = pose["keypoints"].tolist(), pose["scores"].reshape(-1).tolist()  # (K, 2), (K,)
        keypoints = [{"name": name, "x": float(x), "y": float(y), "score": float(score)}
                     for name, (x, y), score in zip(self.names, points, scores, strict=True)]
        return {"box": [float(v) for v in person.box], "score": person.score, "keypoints": keypoints}

    def _drawing(self, path: str, people: list[dict[str, Any]]) -> list[ImageFile]:
        """Skeletons on the full-size, EXIF-oriented image. Runs in the output stage."""
        from vitkit.inputs.decode import DecodeOptions, decode_image
        from vitkit.outputs.skeletons import draw_poses
        from vitkit.tasks.detect import JPEG_MAX_SIDE

        planner = self.planner or OutputPlanner(".")
        image = decode_image(path, DecodeOptions(max_pixels=self.options.max_pixels)).image
        drawn = draw_poses(image, people, self.skeleton, self.options.kpt_threshold)
        if max(drawn.size) > JPEG_MAX_SIDE:
            return [ImageFile("output", planner.path_for(path, "pose", "png"), drawn, {"format": "PNG", "compress_level": 1})]
        return [ImageFile("output", planner.path_for(path, "pose", "jpg"), drawn, {"format": "JPEG", "quality": 90})]


def _coco_box(box: Sequence[float]) -> list[float]:
    """x0, y0, x1, y1 -> COCO's x, y, width, height, which the ViTPose processor takes."""
    x0, y0, x1, y1 = box
    return [x0, y0, x1 - x0, y1 - y0]
