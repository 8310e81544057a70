"""transformers: detection, segmentation and MAE models with their own processors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from vitkit.models.backends.aspect import squash_long_side
from vitkit.errors import ModelTaskMismatchError
from vitkit.models.registry import CLASSIFY, DETECT, INPAINT, SEGMENT, ModelSpec

# Aspect-keeping processors fit the long side into `longest_edge`; images are squashed only as far as
# keeps the short side at least this many pixels (a 1 x 5000 image would come out 0 pixels wide).
MIN_SHORT_SIDE = 16
# With `shortest_edge` alone the long side is unbounded: the resized image is kept within this many
# squares of the short side (at `shortest_edge: 800`, 800 x 6400).
SHORTEST_EDGE_ONLY_MAX_RATIO = 8.0

# Used only when a checkpoint's config names no architecture class of its own.
_AUTO_CLASS_FOR_CAPABILITY = {
    DETECT: "AutoModelForObjectDetection",
    SEGMENT: "AutoModelForSemanticSegmentation",
    INPAINT: "AutoModelForPreTraining",
    CLASSIFY: "AutoModelForImageClassification",
}


@dataclass(frozen=True)
class HfAssets:
    processor: Any  # the checkpoint's own processor: an image processor, or image processor + tokenizer (CLIPSeg)
    config: Any


def load_transformers(spec: ModelSpec, capability: str, trust_remote_code: bool = False) -> tuple[torch.nn.Module, HfAssets]:
    import transformers

    # Its per-load "Loading weights" bar would land on stderr for every run; downloads keep their own.
    transformers.utils.logging.disable_progress_bar()
    config = transformers.AutoConfig.from_pretrained(spec.source, trust_remote_code=trust_remote_code)
    model_class = _model_class(transformers, config, capability, spec)
    # from_pretrained prefers safetensors and loads any .bin with torch.load(weights_only=True).
    model = model_class.from_pretrained(spec.source, trust_remote_code=trust_remote_code)
    model.eval()
    return model, HfAssets(_load_processor(transformers, spec.source, trust_remote_code), config)


def _model_class(transformers: Any, config: Any, capability: str, spec: ModelSpec) -> Any:
    """The head the checkpoint was saved with (its config says), so DETR-panoptic, Mask2Former and
    CLIPSeg each get their own class; the capability's Auto class otherwise."""
    for name in getattr(config, "architectures", None) or []:
        if hasattr(transformers, name):
            return getattr(transformers, name)
    auto_name = _AUTO_CLASS_FOR_CAPABILITY.get(capability)
    if auto_name is None:
        raise ModelTaskMismatchError(f"model {spec.id!r} cannot {capability}")
    return getattr(transformers, auto_name)


def _load_processor(transformers: Any, source: str, trust_remote_code: bool) -> Any:
    try:
        return transformers.AutoProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError, KeyError):
        return transformers.AutoImageProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)


def processor_short_side(image_processor: Any) -> int | None:
    """The shorter side the processor resizes to, for draft JPEG decoding; None if it does not say."""
    size = getattr(image_processor, "size", None)
    if size is None:
        return None
    get = _size_getter(size)
    if get("shortest_edge"):
        return int(get("shortest_edge"))
    if get("height") and get("width"):
        return int(min(get("height"), get("width")))
    return None


def processor_max_ratio(image_processor: Any) -> float | None:
    """The long:short ratio beyond which an image is squashed before the processor sees it; None where
    it never needs to be. A fixed height x width resize costs the same for any shape, and squashing
    first would only throw detail away (30 x 1000 -> 30 x 240 -> 512 x 512)."""
    if not getattr(image_processor, "do_resize", True):
        return None
    size = getattr(image_processor, "size", None)
    get = _size_getter(size) if size is not None else (lambda key: None)
    if get("height") and get("width"):
        return None
    if get("longest_edge"):
        return int(get("longest_edge")) / MIN_SHORT_SIDE
    if get("max_height") and get("max_width"):
        return min(int(get("max_height")), int(get("max_width"))) / MIN_SHORT_SIDE
    return SHORTEST_EDGE_ONLY_MAX_RATIO


def _size_getter(size: Any) -> Any:
    """`size.get` for a processor's size, whether a dict or an object with attributes (SizeDict)."""
    return size.get if isinstance(size, dict) else (lambda key: getattr(size, key, None))


@dataclass(frozen=True)
class ProcessorPreprocess:
    """Runs in dataloader workers: the checkpoint's image processor resizes and normalises one image."""

    image_processor: Any

    def __call__(self, image: Any) -> dict[str, torch.Tensor]:
        max_ratio = processor_max_ratio(self.image_processor)
        if max_ratio is not None:
            image = squash_long_side(image, max_ratio)
        encoded = self.image_processor(images=image, return_tensors="pt")
        return {key: encoded[key][0] for key in ("pixel_values", "pixel_mask") if key in encoded}  # (3, H, W), (H, W)


@dataclass(frozen=True)
class PadWithProcessor:
    """Batches inputs. Processors that resize to a fixed size (SegFormer, CLIPSeg) give equal shapes to
    stack; those that keep the aspect ratio (DETR, Mask2Former) return a pixel mask, and their inputs are
    padded bottom/right to the batch's largest with the processor's own pad."""

    image_processor: Any

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        if "pixel_mask" not in items[0]:
            return {"pixel_values": torch.stack([item["pixel_values"] for item in items])}
        height = max(item["pixel_values"].shape[-2] for item in items)
        width = max(item["pixel_values"].shape[-1] for item in items)
        values, valid = [], []
        for item in items:
            padded, _, _ = self.image_processor.pad(item["pixel_values"][None], (height, width))  # (1, 3, H, W)
            values.append(padded)
            mask = item["pixel_mask"]
            valid.append(torch.nn.functional.pad(mask, (0, width - mask.shape[-1], 0, height - mask.shape[-2]))[None])
        return {"pixel_values": torch.cat(values), "pixel_mask": torch.cat(valid)}
