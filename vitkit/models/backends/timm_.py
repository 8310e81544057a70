"""timm: classification models, their preprocessing and their label names, all from the model's own metadata."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from vitkit.errors import ModelTaskMismatchError, UnknownModelError
from vitkit.models.backends.base import Classifier, ClassNames, ImageEmbedder, hub_source_repo, read_config
from vitkit.models.spec import CLASSIFY, TIMM, TIMM_CAPABILITIES, ModelSpec

if TYPE_CHECKING:
    import torch

LABELS_FILE = "labels.txt"  # optional, one label a line, for custom checkpoints without label_names
_CAPABILITIES = TIMM_CAPABILITIES


@dataclass(frozen=True)
class TimmAssets:
    transform: Callable[[Any], "torch.Tensor"]  # PIL image -> (3, H, W) float tensor: timm's own eval transform, aspect-capped
    data_config: dict[str, Any]
    labels: tuple[str, ...]


class TimmBackend:
    name = TIMM

    def resolve_name(self, reference: str) -> ModelSpec:
        import timm

        pretrained = timm.list_pretrained()
        if reference in pretrained or timm.list_pretrained(f"{reference}.*"):
            return ModelSpec(reference, TIMM, reference, _CAPABILITIES)
        if timm.is_model(reference):
            raise UnknownModelError(
                f"timm model {reference!r} has no pretrained weights",
                hint="vitkit never runs random weights; pick a tagged name from `timm.list_pretrained()`",
            )
        from vitkit.models.registry import raise_unknown

        raise_unknown(reference, pretrained)

    def spec_for_folder(self, path: Path, reference: str) -> ModelSpec | None:
        config = read_config(path, "config.json")
        if config is None or "architecture" not in config:
            return None
        local = str(path.resolve())
        return ModelSpec(reference, TIMM, f"local-dir:{local}", _capabilities_of(config),
                         description=f"timm {config['architecture']}", local_path=local)

    def spec_for_hub(self, reference: str, repo_id: str, snapshot: Path | None) -> ModelSpec:
        return ModelSpec(reference, TIMM, f"hf-hub:{repo_id}", _CAPABILITIES)

    def load(self, spec: ModelSpec, capability: str | None = None,
             trust_remote_code: bool = False) -> tuple["torch.nn.Module", TimmAssets]:
        return load_timm(spec)

    def draft_size(self, assets: TimmAssets) -> int | None:
        return resize_size(assets.data_config)

    def hot_module(self, module: "torch.nn.Module") -> "torch.nn.Module":
        return module

    def classifier(self, module: "torch.nn.Module", assets: TimmAssets) -> Classifier:
        if not getattr(module, "num_classes", 0):
            raise ModelTaskMismatchError("this timm model has no classifier head (num_classes 0): it cannot classify",
                                         hint="use it with `vitkit embed` or `vitkit attention`, or pick a "
                                              "classifier from `vitkit models list --task classify`")
        return Classifier(assets.transform, assets.labels, softmax_scores)

    def image_embedder(self, module: "torch.nn.Module", assets: TimmAssets) -> ImageEmbedder:
        # head_hidden_size: the pre-logits width where a head has its own hidden layer; else num_features.
        dim = getattr(module, "head_hidden_size", None) or module.num_features
        return ImageEmbedder(assets.transform, pooled_features, int(dim))

    def hub_repo_id(self, spec: ModelSpec) -> str | None:
        if spec.is_local or (repo := hub_source_repo(spec)):
            return None if spec.is_local else repo
        import timm.models

        return getattr(timm.models.get_pretrained_cfg(spec.source), "hf_hub_id", None)

    def class_names(self, spec: ModelSpec) -> ClassNames:
        config = _known_config(spec)
        if config is None:
            return ClassNames(None, f"unknown until the model is downloaded (`vitkit models pull {spec.id}`)")
        names = _names_from_config(config, Path(spec.local_path) if spec.local_path else None)
        return ClassNames(names, "" if names else "the checkpoint does not name its classes")


def _capabilities_of(config: dict[str, Any]) -> frozenset[str]:
    """A checkpoint saved without a head (num_classes 0, as self-supervised ones are) cannot classify."""
    num_classes = config.get("num_classes", (config.get("pretrained_cfg") or {}).get("num_classes"))
    return _CAPABILITIES - {CLASSIFY} if num_classes == 0 else _CAPABILITIES


def _known_config(spec: ModelSpec) -> dict[str, Any] | None:
    """config.json of a local folder or cached hub repo, else timm's built-in pretrained config."""
    from vitkit.models.cache import cached_snapshot

    folder = Path(spec.local_path) if spec.local_path else cached_snapshot(hub_source_repo(spec))
    if (config := read_config(folder, "config.json")) is not None:
        return config
    import timm.models

    name = spec.source.removeprefix("hf-hub:").removeprefix("timm/")
    cfg = timm.models.get_pretrained_cfg(name) if "/" not in name else None
    return cfg.to_dict() if cfg is not None else None


def _names_from_config(config: dict[str, Any], folder: Path | None) -> tuple[str, ...] | None:
    """The checkpoint's label names, else a labels file, else ImageNet's by class count (as `get_label_names`)."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    num_classes = int(config.get("num_classes") or (config.get("pretrained_cfg") or {}).get("num_classes") or 0)
    names = config.get("label_names") or (config.get("pretrained_cfg") or {}).get("label_names")
    if names and (not num_classes or len(names) == num_classes):
        return tuple(str(n) for n in (names.values() if isinstance(names, dict) else names))
    if folder is not None and (lines := _labels_file(folder)) and len(lines) == num_classes:
        return lines
    subset = infer_imagenet_subset({"num_classes": num_classes})
    return tuple(ImageNetInfo(subset).label_descriptions()) if subset else None


def _labels_file(folder: Path) -> tuple[str, ...]:
    if not (folder / LABELS_FILE).is_file():
        return ()
    lines = (folder / LABELS_FILE).read_text(encoding="utf-8").splitlines()
    return tuple(line.strip() for line in lines if line.strip())


def load_timm(spec: ModelSpec) -> tuple["torch.nn.Module", TimmAssets]:
    import timm
    from timm.data import create_transform, resolve_data_config

    from vitkit.models.backends.aspect import cap_aspect_ratio

    model = timm.create_model(spec.source, pretrained=True)
    model.eval()
    data_config = resolve_data_config(model=model)
    transform = cap_aspect_ratio(create_transform(**data_config, is_training=False))
    return model, TimmAssets(transform, data_config, get_label_names(model, spec))


def get_label_names(model: "torch.nn.Module", spec: ModelSpec) -> tuple[str, ...]:
    """Human-readable class names: the checkpoint's own, else a labels file, else ImageNet by class count."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    num_classes = int(getattr(model, "num_classes", 0) or 0)
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    names = cfg.get("label_names")
    if isinstance(names, dict):
        names = [names.get(str(i), names.get(i, f"class_{i}")) for i in range(num_classes)]
    if names and len(names) == num_classes:
        descriptions = cfg.get("label_descriptions") or {}
        return tuple(str(descriptions.get(name, name)) for name in names)
    if spec.local_path and len(lines := _labels_file(Path(spec.local_path))) == num_classes and lines:
        return lines
    subset = infer_imagenet_subset(model)
    if subset:
        return tuple(ImageNetInfo(subset).label_descriptions())
    return tuple(f"class_{i}" for i in range(num_classes))


def softmax_scores(module: "torch.nn.Module", images: "torch.Tensor") -> "torch.Tensor":
    return module(images).float().softmax(dim=-1)  # (B, num_classes)


def pooled_features(module: "torch.nn.Module", images: "torch.Tensor") -> "torch.Tensor":
    """timm's own pooled embedding: the head's input after pooling and its norm, before the classifier."""
    return module.forward_head(module.forward_features(images), pre_logits=True)  # (B, dim)


def resize_size(data_config: dict[str, Any]) -> int:
    """Shorter side timm's eval transform resizes to before cropping; decoding below it would lose detail."""
    height, width = data_config["input_size"][-2:]
    crop_pct = data_config.get("crop_pct") or 1.0
    return int(max(height, width) / crop_pct) + 1


BACKEND = TimmBackend()
