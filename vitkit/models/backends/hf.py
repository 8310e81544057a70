"""transformers: classification, detection, segmentation, depth, pose and MAE models with their own processors.

What a checkpoint can do is read from the head class its config names (`architectures`), never from
its name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vitkit.errors import ModelTaskMismatchError, UnknownModelError
from vitkit.models.backends.base import Classifier, ClassNames, read_config
from vitkit.models.spec import (ASK, CLASSIFY, DEPTH, DETECT, INPAINT, POSE, SEGMENT, TRANSFORMERS, VLM_CAPABILITIES,
                                ModelSpec)

if TYPE_CHECKING:
    import torch

# Aspect-keeping processors fit the long side into `longest_edge`; images are squashed only as far as
# keeps the short side at least this many pixels (a 1 x 5000 image would come out 0 pixels wide).
MIN_SHORT_SIDE = 16
# With `shortest_edge` alone the long side is unbounded: the resized image is kept within this many
# squares of the short side (at `shortest_edge: 800`, 800 x 6400).
SHORTEST_EDGE_ONLY_MAX_RATIO = 8.0

# transformers names its task heads by suffix; that suffix (not the model's name) says what it can do.
# The one list of head classes vitkit knows.
HEAD_CAPABILITIES = (
    ("ForObjectDetection", DETECT),
    ("ForSemanticSegmentation", SEGMENT),
    ("ForUniversalSegmentation", SEGMENT),
    ("ForImageSegmentation", SEGMENT),
    ("ForSegmentation", SEGMENT),
    ("SamModel", SEGMENT),  # Segment Anything: no head suffix; promptable masks (vitkit/models/backends/sam.py)
    ("MAEForPreTraining", INPAINT),
    ("ForDepthEstimation", DEPTH),
    ("ForPoseEstimation", POSE),  # ViTPose: keypoint heatmaps for person crops (vitkit/models/backends/hf_pose.py)
    ("ForImageClassification", CLASSIFY),
)
SEGMENTATION_HEADS = tuple(suffix for suffix, capability in HEAD_CAPABILITIES if capability == SEGMENT)
# What an `org/repo` id can be for when its config is not in the cache yet; the command's own check
# happens at load time.
_UNKNOWN_HEAD_CAPABILITIES = frozenset({DETECT, SEGMENT, INPAINT, DEPTH, POSE, ASK})
# Heads whose config's id2label names the classes it predicts.
_CLASS_HEAD_CAPABILITIES = frozenset({CLASSIFY, DETECT, SEGMENT})

# Used only when a checkpoint's config names no architecture class of its own.
_AUTO_CLASS_FOR_CAPABILITY = {
    DETECT: "AutoModelForObjectDetection",
    SEGMENT: "AutoModelForSemanticSegmentation",
    INPAINT: "AutoModelForPreTraining",
    CLASSIFY: "AutoModelForImageClassification",
    DEPTH: "AutoModelForDepthEstimation",
    ASK: "AutoModelForImageTextToText",
}


def head_capabilities(architectures: list[str] | None) -> frozenset[str]:
    return frozenset(cap for head in architectures or () for suffix, cap in HEAD_CAPABILITIES if head.endswith(suffix))


def config_capabilities(config: dict[str, Any]) -> frozenset[str]:
    """What a saved config.json can do: its head's capabilities, and questions and captions when its
    architecture is one transformers loads as AutoModelForImageTextToText (LLaVA, Idefics3, Qwen2-VL, ...)."""
    capabilities = head_capabilities(config.get("architectures"))
    return capabilities | VLM_CAPABILITIES if is_image_text_to_text(config) else capabilities


def is_image_text_to_text(config: dict[str, Any]) -> bool:
    # Every such model pairs a vision tower with a language model in its config; only those pay for
    # importing transformers' class table (which imports torch).
    if "vision_config" not in config or not config.get("architectures"):
        return False
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    known = set(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.values())
    return any(name in known for name in config["architectures"])


@dataclass(frozen=True)
class HfAssets:
    processor: Any  # the checkpoint's own processor: an image processor, or image processor + tokenizer (CLIPSeg)
    config: Any

    @property
    def image_processor(self) -> Any:
        return getattr(self.processor, "image_processor", self.processor)


class TransformersBackend:
    name = TRANSFORMERS

    def resolve_name(self, reference: str) -> ModelSpec:
        raise UnknownModelError(f"unknown model {reference!r}",
                                hint="give a transformers model as its Hugging Face id (org/repo) or a saved folder")

    def spec_for_folder(self, path: Path, reference: str) -> ModelSpec | None:
        config = read_config(path, "config.json")
        if config is None or "model_type" not in config:
            return None
        local = str(path.resolve())
        return ModelSpec(reference, TRANSFORMERS, local, config_capabilities(config),
                         description=f"transformers {config['model_type']}", local_path=local)

    def spec_for_hub(self, reference: str, repo_id: str, snapshot: Path | None) -> ModelSpec:
        config = read_config(snapshot, "config.json")
        if config is None or "model_type" not in config:
            return ModelSpec(reference, TRANSFORMERS, repo_id, _UNKNOWN_HEAD_CAPABILITIES, hub_repo=repo_id)
        return ModelSpec(reference, TRANSFORMERS, repo_id, config_capabilities(config),
                         description=f"transformers {config['model_type']}", hub_repo=repo_id)

    def load(self, spec: ModelSpec, capability: str | None = None,
             trust_remote_code: bool = False) -> tuple["torch.nn.Module", HfAssets]:
        return load_transformers(spec, capability, trust_remote_code)

    def draft_size(self, assets: HfAssets) -> int | None:
        return processor_short_side(assets.image_processor)

    def hot_module(self, module: "torch.nn.Module") -> "torch.nn.Module":
        return module

    def classifier(self, module: "torch.nn.Module", assets: HfAssets) -> Classifier:
        """The checkpoint's own image processor and id2label; scores as transformers' image-classification
        pipeline computes them (softmax, or sigmoid for multi-label and single-logit heads)."""
        config = module.config
        labels = id2label_names(getattr(config, "id2label", None) or {}) or ()
        labels = tuple(labels) + tuple(f"LABEL_{i}" for i in range(len(labels), int(config.num_labels)))
        image_processor = assets.image_processor
        return Classifier(ProcessorPreprocess(image_processor), labels[: int(config.num_labels)],
                          LogitScores(_activation(config)), PadWithProcessor(image_processor))

    def hub_repo_id(self, spec: ModelSpec) -> str | None:
        return None if spec.is_local else spec.source

    def class_names(self, spec: ModelSpec) -> ClassNames:
        from vitkit.models.cache import cached_snapshot

        folder = Path(spec.local_path) if spec.local_path else cached_snapshot(spec.source)
        config = read_config(folder, "config.json")
        if config is None:
            return ClassNames(None, f"unknown until the model is downloaded (`vitkit models pull {spec.id}`)")
        if not head_capabilities(config.get("architectures")) & _CLASS_HEAD_CAPABILITIES:
            return ClassNames(None, "none: its head does not predict classes")
        if "text_config" in config:  # OWL, Grounding DINO, CLIPSeg: classes are text given at run time
            return ClassNames(None, "open vocabulary: whatever --prompt names")
        names = id2label_names(config.get("id2label") or {})
        return ClassNames(names, "" if names else "the checkpoint does not name its classes")


def id2label_names(id2label: dict[Any, str]) -> tuple[str, ...] | None:
    """Class names in class-id order; None when transformers' placeholders (LABEL_0, ...) are all there is."""
    by_id = {int(k): str(v) for k, v in id2label.items()}
    names = tuple(by_id.get(i, f"LABEL_{i}") for i in range(max(by_id, default=-1) + 1))
    return None if names == tuple(f"LABEL_{i}" for i in range(len(names))) else names


def _activation(config: Any) -> str:
    problem = getattr(config, "problem_type", None)
    if problem == "regression":
        return "none"
    if problem == "multi_label_classification" or int(config.num_labels) == 1:
        return "sigmoid"
    return "softmax"


@dataclass(frozen=True)
class LogitScores:
    activation: str  # softmax | sigmoid | none

    def __call__(self, module: "torch.nn.Module", inputs: dict[str, "torch.Tensor"]) -> "torch.Tensor":
        logits = module(**inputs).logits.float()  # (B, num_labels)
        if self.activation == "softmax":
            return logits.softmax(dim=-1)
        return logits.sigmoid() if self.activation == "sigmoid" else logits


def load_transformers(spec: ModelSpec, capability: str | None,
                      trust_remote_code: bool = False) -> tuple["torch.nn.Module", HfAssets]:
    import transformers

    # Its per-load "Loading weights" bar would land on stderr for every run; downloads keep their own.
    transformers.utils.logging.disable_progress_bar()
    config = transformers.AutoConfig.from_pretrained(spec.source, trust_remote_code=trust_remote_code)
    model_class = _model_class(transformers, config, capability, spec)
    # from_pretrained prefers safetensors and loads any .bin with torch.load(weights_only=True).
    model = model_class.from_pretrained(spec.source, trust_remote_code=trust_remote_code)
    model.eval()
    return model, HfAssets(_load_processor(transformers, spec.source, trust_remote_code), config)


def _model_class(transformers: Any, config: Any, capability: str | None, spec: ModelSpec) -> Any:
    """The head the checkpoint was saved with (its config says), so DETR-panoptic, Mask2Former and
    CLIPSeg each get their own class; the capability's Auto class otherwise."""
    for name in getattr(config, "architectures", None) or []:
        if hasattr(transformers, name):
            return getattr(transformers, name)
    auto_name = _AUTO_CLASS_FOR_CAPABILITY.get(capability or "")
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
        if getattr(image_processor, "keep_aspect_ratio", False):
            # DPT-style (Depth Anything): one side fits the size, the other is rounded to a multiple of
            # `ensure_multiple_of`, which beyond this ratio is 0 pixels.
            multiple = max(1, int(getattr(image_processor, "ensure_multiple_of", 1) or 1))
            return min(int(get("height")), int(get("width"))) / multiple
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

    def __call__(self, image: Any) -> dict[str, "torch.Tensor"]:
        max_ratio = processor_max_ratio(self.image_processor)
        if max_ratio is not None:
            from vitkit.models.backends.aspect import squash_long_side

            image = squash_long_side(image, max_ratio)
        encoded = self.image_processor(images=image, return_tensors="pt")
        return {key: encoded[key][0] for key in ("pixel_values", "pixel_mask") if key in encoded}  # (3, H, W), (H, W)


@dataclass(frozen=True)
class PadWithProcessor:
    """Batches inputs. Processors that resize to a fixed size (SegFormer, CLIPSeg) give equal shapes to
    stack; those that keep the aspect ratio (DETR, Mask2Former) return a pixel mask, and their inputs are
    padded bottom/right to the batch's largest with the processor's own pad."""

    image_processor: Any

    def __call__(self, items: list[dict[str, "torch.Tensor"]]) -> dict[str, "torch.Tensor"]:
        import torch

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


BACKEND = TransformersBackend()
