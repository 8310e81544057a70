"""Object detection with a transformers DETR-family model, post-processed by the model's own processor."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from vitkit.models.backends.hf import HfAssets, PadWithProcessor, ProcessorPreprocess, processor_short_side
from vitkit.inputs.data import ImagePreprocess, Sample
from vitkit.inputs.decode import DEFAULT_MAX_PIXELS
from vitkit.errors import UsageError
from vitkit.models.backends.sam import sam_draft_size
from vitkit.models.loading import LoadedModel
from vitkit.outputs.artifacts import Artifacts, ImageFile
from vitkit.outputs.files import OutputPlanner
from vitkit.outputs.records import RecordLayout, explode_rows
from vitkit.tasks.base import TaskResult
from vitkit.tasks.detect_masks import BoxMasker, CollateWithSam, MaskedDetections, WithSamInputs

# libjpeg's largest side; an annotated image longer than this is written as PNG.
JPEG_MAX_SIDE = 65_500


def _describe(record: dict[str, Any]) -> str:
    found = record.get("detections", [])
    more = f" … and {len(found) - 6} more" if len(found) > 6 else ""
    return ", ".join(f"{d['label']} {d['score']:.2f}" for d in found[:6]) + more or "(nothing)"


DETECT_LAYOUT = RecordLayout(
    csv_columns=("path", "width", "height", "rank", "label", "class_id", "score", "box", "error"),
    csv_rows=explode_rows("detections", ("label", "class_id", "score", "box")),
    describe=_describe,
    table_items="detections",
)


@dataclass(frozen=True)
class DetectOptions:
    threshold: float = 0.7
    classes: tuple[str, ...] = ()  # keep only these labels; empty keeps all
    max_detections: int | None = None
    out_dir: str | None = None  # annotated images go here when set
    max_pixels: int = DEFAULT_MAX_PIXELS  # for decoding the originals again to draw on


class DetectTask:
    layout = DETECT_LAYOUT

    def __init__(self, model: LoadedModel, options: DetectOptions = DetectOptions(), inputs: Sequence[str] = (),
                 mask_model: LoadedModel | None = None) -> None:
        self.model = model
        self.options = options
        image_processor = self._check_detector(model, options)
        self.preprocess = ImagePreprocess(ProcessorPreprocess(image_processor))
        self.collate_inputs = PadWithProcessor(image_processor)
        self.draft_size = processor_short_side(image_processor)
        self.planner = OutputPlanner(options.out_dir, inputs) if options.out_dir else None
        self.masker = BoxMasker(mask_model) if mask_model is not None else None
        if self.masker is not None:
            self.preprocess = WithSamInputs(self.preprocess, self.masker.image_inputs)
            self.collate_inputs = CollateWithSam(self.collate_inputs)
            sam_draft = sam_draft_size(mask_model.assets.image_processor)
            self.draft_size = max(self.draft_size, sam_draft) if self.draft_size and sam_draft else None

    def _check_detector(self, model: LoadedModel, options: DetectOptions) -> Any:
        """Sets the processor and the class names; returns the image processor that prepares inputs."""
        if not isinstance(model.assets, HfAssets) or not hasattr(model.assets.processor, "post_process_object_detection"):
            raise UsageError(f"model {model.spec.id!r} is not an object detector with a DETR-style processor")
        self.processor = model.assets.processor
        self.id2label = {int(k): v for k, v in model.module.config.id2label.items()}
        unknown = sorted(set(options.classes) - set(self.id2label.values()))
        if unknown:
            raise UsageError(f"--classes names labels the model does not have: {', '.join(unknown)}",
                             hint="see the model's labels with `vitkit models show`")
        return self.processor

    def _run_detector(self, inputs: dict[str, Any]) -> Any:
        return self.model.module(**inputs)

    def forward(self, inputs: dict[str, Any]) -> Any:
        if self.masker is None:
            return self._run_detector(inputs)
        # Masks need the kept boxes: the detector's post-processing runs here, before SAM's decoder.
        sizes = [tuple(size) for size in inputs["target_size"].tolist()]
        found = self._found(self._run_detector(inputs["detector"]), sizes)
        return self.masker.low_res_masks(inputs["sam"], found, sizes)

    def _found(self, outputs: Any, sizes: Sequence[tuple[int, int]]) -> list[list[dict[str, Any]]]:
        """Per image, the detections its record keeps; `sizes` are the displayed images' (H, W)."""
        outputs.logits, outputs.pred_boxes = outputs.logits.float().cpu(), outputs.pred_boxes.float().cpu()
        results = self.processor.post_process_object_detection(
            outputs, threshold=self.options.threshold, target_sizes=list(sizes))
        return [self._detections(result, width, height) for result, (height, width) in zip(results, sizes)]

    def postprocess(self, outputs: Any, samples: Sequence[Sample]) -> list[TaskResult]:
        sizes = [(s.height or 0, s.width or 0) for s in samples]
        if isinstance(outputs, MaskedDetections):
            found = outputs.found
            for index, detections in enumerate(found):
                self.masker.attach_masks(detections, outputs.low_res[index], sizes[index],  # type: ignore[union-attr]
                                         outputs.reshaped[index].tolist())
        else:
            found = self._found(outputs, sizes)
        records: list[TaskResult] = []
        for sample, detections in zip(samples, found):
            fields = {"detections": detections}
            if self.planner:
                records.append(Artifacts(fields, functools.partial(
                    annotated_image, self.planner, sample.path, fields["detections"], self.options.max_pixels)))
            else:
                records.append(fields)
        return records

    def _detections(self, result: dict[str, torch.Tensor], width: int, height: int) -> list[dict[str, Any]]:
        found = []
        for score, label, box in zip(result["scores"].tolist(), result["labels"].tolist(), result["boxes"].tolist()):
            name = self.id2label.get(int(label), f"class_{label}")
            if self.options.classes and name not in self.options.classes:
                continue
            found.append({"label": name, "class_id": int(label), "score": float(score), "box": clip_box(box, width, height)})
        return ranked(found, self.options.max_detections)


def clip_box(box: Sequence[float], width: int, height: int) -> list[float]:
    """Detectors' boxes may overhang the image; records keep them inside it."""
    x0, y0, x1, y1 = box
    return [min(max(x0, 0.0), width), min(max(y0, 0.0), height), min(max(x1, 0.0), width), min(max(y1, 0.0), height)]


def ranked(found: list[dict[str, Any]], max_detections: int | None) -> list[dict[str, Any]]:
    found.sort(key=lambda d: -d["score"])
    return found[:max_detections] if max_detections else found


def annotated_image(planner: OutputPlanner, path: str, detections: list[dict[str, Any]],
                    max_pixels: int = DEFAULT_MAX_PIXELS) -> list[ImageFile]:
    """Boxes drawn on the full-resolution, EXIF-oriented image; made even when nothing was found.
    JPEG, or PNG for an image too long for JPEG (the path says which). Runs in the output stage."""
    from vitkit.inputs.decode import DecodeOptions, decode_image
    from vitkit.outputs.boxes import draw_detections

    image = draw_detections(decode_image(path, DecodeOptions(max_pixels=max_pixels)).image, detections)
    if max(image.size) > JPEG_MAX_SIDE:
        target: Path = planner.path_for(path, "detect", "png")
        return [ImageFile("output", target, image, {"format": "PNG", "compress_level": 1})]
    target = planner.path_for(path, "detect", "jpg")
    return [ImageFile("output", target, image, {"format": "JPEG", "quality": 90})]
