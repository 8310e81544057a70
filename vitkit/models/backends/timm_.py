"""timm: classification models, their preprocessing and their label names, all from the model's own metadata."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from vitkit.models.backends.aspect import cap_aspect_ratio
from vitkit.models.registry import ModelSpec

LABELS_FILE = "labels.txt"  # optional, one label a line, for custom checkpoints without label_names


@dataclass(frozen=True)
class TimmAssets:
    transform: Callable[[Any], torch.Tensor]  # PIL image -> (3, H, W) float tensor: timm's own eval transform, aspect-capped
    data_config: dict[str, Any]
    labels: tuple[str, ...]


def load_timm(spec: ModelSpec) -> tuple[torch.nn.Module, TimmAssets]:
    import timm
    from timm.data import create_transform, resolve_data_config

    model = timm.create_model(spec.source, pretrained=True)
    model.eval()
    data_config = resolve_data_config(model=model)
    transform = cap_aspect_ratio(create_transform(**data_config, is_training=False))
    return model, TimmAssets(transform, data_config, get_label_names(model, spec))


def get_label_names(model: torch.nn.Module, spec: ModelSpec) -> tuple[str, ...]:
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
    if spec.local_path and (Path(spec.local_path) / LABELS_FILE).is_file():
        lines = (Path(spec.local_path) / LABELS_FILE).read_text(encoding="utf-8").splitlines()
        lines = [line.strip() for line in lines if line.strip()]
        if len(lines) == num_classes:
            return tuple(lines)
    subset = infer_imagenet_subset(model)
    if subset:
        return tuple(ImageNetInfo(subset).label_descriptions())
    return tuple(f"class_{i}" for i in range(num_classes))


def resize_size(data_config: dict[str, Any]) -> int:
    """Shorter side timm's eval transform resizes to before cropping; decoding below it would lose detail."""
    height, width = data_config["input_size"][-2:]
    crop_pct = data_config.get("crop_pct") or 1.0
    return int(max(height, width) / crop_pct) + 1
