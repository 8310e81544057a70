"""Segmentation with a transformers model and its own processor: semantic (SegFormer), panoptic
(Mask2Former, DETR) or text-prompted (CLIPSeg), with label-index PNG masks and colour overlays."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from vitkit.outputs import masks
from vitkit.models.backends.hf import HfAssets, PadWithProcessor, ProcessorPreprocess, processor_short_side
from vitkit.inputs.data import ImagePreprocess, Sample
from vitkit.inputs.decode import DEFAULT_MAX_PIXELS, DecodeOptions, decode_image
from vitkit.errors import UsageError
from vitkit.models.backends.sam import is_sam_model
from vitkit.models.loading import LoadedModel
from vitkit.outputs.artifacts import Artifacts, ImageFile
from vitkit.outputs.files import OutputPlanner
from vitkit.outputs.records import RecordLayout, explode_rows
from vitkit.runtime.runner import model_context
from vitkit.tasks.base import TaskResult
from vitkit.tasks.segment_postprocess import panoptic_map, semantic_map
from vitkit.tasks.segment_upsample import upsampled_argmax

SEMANTIC, PANOPTIC, TEXT, PROMPT, AUTO = "semantic", "panoptic", "text", "prompt", "auto"
MODES = (SEMANTIC, PANOPTIC, TEXT, PROMPT, AUTO)  # prompt: tasks/segment_prompt.py; auto: tasks/segment_auto.py
TEXT_THRESHOLD = 0.5  # CLIPSeg: a pixel shows a prompt where sigmoid(logit) > 0.5
_POST_PROCESS = {SEMANTIC: "post_process_semantic_segmentation", PANOPTIC: "post_process_panoptic_segmentation"}
from vitkit.models.backends.hf import SEGMENTATION_HEADS as _SEGMENTATION_HEADS  # noqa: E402 - the one head list
# Query-based outputs whose masks cover the whole padded batch canvas: (B, Q, h, w).
_PADDED_MASK_FIELDS = ("masks_queries_logits", "pred_masks")


def _describe(record: dict[str, Any]) -> str:
    segments = sorted(record.get("segments") or [], key=lambda s: -s["area"])
    pixels = max(1, (record.get("width") or 0) * (record.get("height") or 0))
    text = ", ".join(f"{s['label'] or 'segment'} {100 * s['area'] / pixels:.1f}%" for s in segments[:6])
    return (text + (" …" if len(segments) > 6 else "")) if text else "(nothing)"


_segment_rows = explode_rows("segments", ("id", "label", "score", "area", "box"))


def _csv_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    files = {"mask": record.get("mask"), "overlay": record.get("overlay")}
    return [{**row, **files} for row in _segment_rows(record)]


SEGMENT_LAYOUT = RecordLayout(
    csv_columns=("path", "width", "height", "rank", "id", "label", "score", "area", "box", "mask", "overlay", "error"),
    csv_rows=_csv_rows,
    describe=_describe,
)


@dataclass(frozen=True)
class SegmentOptions:
    mode: str = SEMANTIC
    prompts: tuple[str, ...] = ()  # text mode: one mask per prompt
    out_dir: str | None = None  # label masks and overlays are written here when set
    alpha: float = 0.5  # overlay opacity of the segment colours
    instances: bool = False  # semantic mode: one segment per connected component of a class
    min_area: int = 0  # segments smaller than this many pixels are dropped
    max_pixels: int = DEFAULT_MAX_PIXELS  # for decoding the originals again to draw overlays

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UsageError(f"unknown segmentation mode {self.mode!r}", hint=f"use --mode {', '.join(MODES)}")
        if self.mode == TEXT and not self.prompts:
            raise UsageError("--mode text needs at least one --prompt", hint="e.g. --prompt 'a dog' --prompt grass")
        if self.mode != TEXT and self.prompts:
            raise UsageError("--prompt only applies to --mode text", hint="add --mode text")
        if any(not prompt.strip() for prompt in self.prompts):
            raise UsageError("--prompt must not be empty")
        if self.instances and self.mode != SEMANTIC:
            raise UsageError("--instances only applies to --mode semantic", hint="panoptic segments are instances already")
        if not 0.0 <= self.alpha <= 1.0:
            raise UsageError(f"--alpha must be between 0 and 1, not {self.alpha}")
        if self.min_area < 0:
            raise UsageError(f"--min-area must be 0 or more, not {self.min_area}")


@dataclass(frozen=True)
class Forwarded:
    outputs: Any  # the model's own output object; text mode: logits (B, P, s, s)
    pixel_mask: torch.Tensor | None  # (B, H, W), 1 where the padded batch holds the image


@dataclass(frozen=True)
class Segmentation:
    """One image's label map and what its ids mean."""

    label_map: np.ndarray  # (H, W) int32 ids, the size of the original image
    labels: Mapping[int, tuple[str, float | None]]  # id -> (label, score)
    background: int | None  # the id of "no segment", or None when every id is a segment (semantic classes)
    max_id: int  # the largest id this model and mode can produce: the mask PNG's bit depth


class SegmentTask:
    layout = SEGMENT_LAYOUT

    def __init__(self, model: LoadedModel, options: SegmentOptions = SegmentOptions(), inputs: Sequence[str] = ()) -> None:
        if not isinstance(model.assets, HfAssets):
            raise UsageError(f"model {model.spec.id!r} is not a transformers segmentation model",
                             hint="pick a segmentation model from `vitkit models list`, e.g. --model segformer-b0")
        self.model = model
        self.options = options
        self.processor = model.assets.processor
        self.image_processor = getattr(self.processor, "image_processor", self.processor)
        _check_mode(model, self.processor, options.mode)
        config = model.module.config
        self.id2label = {int(k): v for k, v in (getattr(config, "id2label", None) or {}).items()}
        self.num_labels = int(getattr(config, "num_labels", len(self.id2label)) or len(self.id2label))
        self.class_labels = {c: (self._label(c), None) for c in range(self.num_labels)}  # semantic: id = class id
        self.preprocess = ImagePreprocess(ProcessorPreprocess(self.image_processor))
        self.collate_inputs = PadWithProcessor(self.image_processor)
        self.draft_size = processor_short_side(self.image_processor)
        self.planner = OutputPlanner(options.out_dir, inputs) if options.out_dir else None
        self.prompt_embeddings = _prompt_embeddings(model, self.processor, options.prompts) if options.mode == TEXT else None

    def forward(self, inputs: dict[str, torch.Tensor]) -> Forwarded:
        if self.prompt_embeddings is None:
            return Forwarded(self.model.module(**inputs), inputs.get("pixel_mask"))
        pixel_values = inputs["pixel_values"]  # (B, 3, S, S)
        prompts = self.prompt_embeddings.to(pixel_values.device)  # (P, D)
        batch, count = pixel_values.shape[0], prompts.shape[0]
        # Image-major pairs: row b * P + p is image b with prompt p. CLIPSeg squeezes (1, s, s) to (s, s).
        logits = self.model.module(pixel_values=pixel_values.repeat_interleave(count, dim=0),
                                   conditional_embeddings=prompts.repeat(batch, 1)).logits
        return Forwarded(logits.reshape(batch, count, *logits.shape[-2:]), None)  # (B, P, s, s)

    def postprocess(self, forwarded: Forwarded, samples: Sequence[Sample]) -> list[TaskResult]:
        records = []
        for index, sample in enumerate(samples):
            size = (sample.height or 0, sample.width or 0)  # the original, upright image: masks come out this size
            if self.options.mode == TEXT:
                segmentation = self._text(forwarded.outputs[index], size)
            elif self.options.mode == PANOPTIC:
                segmentation = self._panoptic(_one_image(forwarded, index), size)
            else:
                segmentation = self._semantic(_one_image(forwarded, index), size)
            records.append(self._fields(segmentation, sample))
        return records

    def _semantic(self, outputs: Any, size: tuple[int, int]) -> Segmentation:
        class_map = semantic_map(self.image_processor, outputs, size)
        if class_map is None:  # a processor whose post-processing is not reproduced: its own, at full size
            [class_map] = self.image_processor.post_process_semantic_segmentation(outputs, target_sizes=[size])
        class_map = class_map.to(torch.int32).cpu().numpy()
        if self.options.instances:
            instance_map, owners = masks.split_instances(class_map, self.options.min_area)
            labels = {i: (self._label(c), None) for i, c in enumerate(owners, 1)}
            return Segmentation(instance_map, labels, 0, len(owners))
        return Segmentation(class_map, self.class_labels, None, self.num_labels - 1)

    def _panoptic(self, outputs: Any, size: tuple[int, int]) -> Segmentation:
        result = panoptic_map(self.image_processor, outputs, size)
        if result is not None:
            label_map, segments_info = result.segmentation, result.segments
        else:  # a processor whose post-processing is not reproduced: its own, at full size
            # An explicit empty set: nothing fused (as the processor's default), without its warning.
            [own] = self.image_processor.post_process_panoptic_segmentation(
                outputs, label_ids_to_fuse=set(), target_sizes=[size])
            label_map, segments_info = own["segmentation"].clamp(min=0), own["segments_info"]  # -1: nothing found
        label_map = label_map.to(torch.int32).cpu().numpy()
        labels: dict[int, tuple[str, float | None]] = {}
        for info in segments_info:
            labels.setdefault(int(info["id"]), (self._label(int(info["label_id"])), float(info["score"])))
        return Segmentation(label_map, labels, 0, max(labels, default=0))

    def _text(self, logits: torch.Tensor, size: tuple[int, int]) -> Segmentation:
        # (H, W) each: the likeliest prompt per pixel, the probabilities upsampled a few prompts at a time
        best, winner = upsampled_argmax(logits, size, lambda start, group: group.sigmoid_())
        label_map = torch.where(best > TEXT_THRESHOLD, winner.int() + 1, 0).to(torch.int32).cpu().numpy()
        count = len(self.options.prompts)
        # score: the mean probability over the pixels the prompt won
        areas = np.bincount(label_map.ravel(), minlength=count + 1)
        sums = np.bincount(label_map.ravel(), weights=best.cpu().numpy().ravel(), minlength=count + 1)
        labels = {i: (prompt, float(sums[i] / areas[i]) if areas[i] else None)
                  for i, prompt in enumerate(self.options.prompts, 1)}
        return Segmentation(label_map, labels, 0, count)

    def _fields(self, segmentation: Segmentation, sample: Sample) -> TaskResult:
        label_map, max_id = segmentation.label_map, segmentation.max_id
        fill = segmentation.background
        if fill is None:  # semantic classes: dropped pixels get a void id no class uses
            fill = masks.L_MAX if max_id < masks.L_MAX else masks.I16_MAX
            max_id = max(max_id, fill) if self.options.min_area else max_id
        stats = masks.segment_stats(label_map, ignore=(fill,))
        if self.options.min_area:
            label_map, stats = masks.drop_small(label_map, stats, self.options.min_area, fill)
        segments = []
        for value, s in stats.items():
            label, score = segmentation.labels.get(value) or (self._label(value), None)
            segments.append({"id": value, "label": label, "score": score, "area": s.area, "box": list(s.box)})
        fields: dict[str, Any] = {"segments": segments, "mask": None, "overlay": None}
        if self.planner is None:
            return fields
        # What waits for the output stage, in the PNG's own type (beyond 16 bits label_image says why not).
        if max_id <= masks.I16_MAX:
            label_map = masks.compact(label_map, max_id)
        return Artifacts(fields, functools.partial(self._files, self.planner, sample.path, label_map, max_id, fill))

    def _files(self, planner: OutputPlanner, path: str, label_map: np.ndarray, max_id: int,
               uncoloured: int) -> list[ImageFile]:
        """The label mask and the overlay on the original (decoded again at full size, upright). Runs in
        the output stage; both files are written or neither."""
        mask = ImageFile("mask", planner.path_for(path, "mask", "png"), masks.label_image(label_map, max_id),
                         {"format": "PNG"})
        original = decode_image(path, DecodeOptions(max_pixels=self.options.max_pixels)).image
        # Overlays are for looking at: fast compression (about 4x quicker than Pillow's default, 10% larger).
        overlay = ImageFile("overlay", planner.path_for(path, "overlay", "png"),
                            masks.overlay_image(original, label_map, self.options.alpha, (uncoloured,)),
                            {"format": "PNG", "compress_level": 1})
        return [mask, overlay]

    def _label(self, class_id: int) -> str:
        return self.id2label.get(class_id, f"class_{class_id}")


def _supported_modes(model: LoadedModel, processor: Any) -> list[str]:
    module = model.module
    if not type(module).__name__.endswith(_SEGMENTATION_HEADS):
        return []
    if is_sam_model(module):
        return [PROMPT, AUTO]
    if hasattr(module, "get_conditional_embeddings"):  # prompt-conditioned (CLIPSeg)
        return [TEXT] if getattr(processor, "tokenizer", None) is not None else []
    image_processor = getattr(processor, "image_processor", processor)
    return [mode for mode, method in _POST_PROCESS.items() if hasattr(image_processor, method)]


def _check_mode(model: LoadedModel, processor: Any, mode: str) -> None:
    supported = _supported_modes(model, processor)
    if mode in supported:
        return
    hint = (f"this model does --mode {' or --mode '.join(supported)}" if supported
            else "pick a segmentation model from `vitkit models list`, e.g. --model segformer-b0")
    raise UsageError(f"model {model.spec.id!r} ({type(model.module).__name__}) cannot do {mode} segmentation", hint=hint)


def _prompt_embeddings(model: LoadedModel, processor: Any, prompts: Sequence[str]) -> torch.Tensor:
    """The prompts' conditional embeddings, computed once, in fp32: (P, D). Every image of the run reuses them."""
    text = processor.tokenizer(list(prompts), padding=True, truncation=True, return_tensors="pt")
    with model_context(model, torch.float32):
        return model.module.get_conditional_embeddings(
            batch_size=len(prompts), input_ids=text["input_ids"].to(model.device),
            attention_mask=text["attention_mask"].to(model.device))


def _one_image(forwarded: Forwarded, index: int) -> Any:
    """Image `index`'s outputs alone, as a batch of one, with query masks cropped to the image's own part
    of the padded canvas: the processors resize masks to the target size as they are, so padding left
    in would shift and stretch them off the image."""
    outputs, pixel_mask = forwarded.outputs, forwarded.pixel_mask
    fields = {}
    for name, value in outputs.items():
        if not isinstance(value, torch.Tensor):
            continue
        value = value[index: index + 1]
        if name in _PADDED_MASK_FIELDS and pixel_mask is not None:
            value = _crop_to_valid(value, pixel_mask[index])
        fields[name] = value.float()
    return type(outputs)(**fields)


def _crop_to_valid(query_masks: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(1, Q, h, w) masks over an (H, W) canvas -> the part over the canvas's valid (top-left) region."""
    canvas_height, canvas_width = valid.shape
    height, width = int(valid.any(dim=1).sum()), int(valid.any(dim=0).sum())
    rows = math.ceil(height * query_masks.shape[-2] / canvas_height)
    cols = math.ceil(width * query_masks.shape[-1] / canvas_width)
    return query_masks[..., :rows, :cols]


