"""transformers: detection, segmentation and MAE models with their own image processors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from vitkit.registry import CLASSIFY, DETECT, INPAINT, SEGMENT, ModelSpec

_AUTO_CLASS_FOR_CAPABILITY = {
    DETECT: "AutoModelForObjectDetection",
    SEGMENT: "AutoModelForSemanticSegmentation",
    INPAINT: "AutoModelForPreTraining",
    CLASSIFY: "AutoModelForImageClassification",
}


@dataclass(frozen=True)
class HfAssets:
    processor: Any  # the checkpoint's own image processor (or processor, for text-prompted models)


def load_transformers(spec: ModelSpec, capability: str, trust_remote_code: bool = False) -> tuple[torch.nn.Module, HfAssets]:
    import transformers

    auto_class = getattr(transformers, _AUTO_CLASS_FOR_CAPABILITY.get(capability, "AutoModel"))
    # use_safetensors=None prefers safetensors and lets transformers fall back to its weights_only torch.load
    model = auto_class.from_pretrained(spec.source, trust_remote_code=trust_remote_code)
    processor = transformers.AutoImageProcessor.from_pretrained(spec.source, trust_remote_code=trust_remote_code)
    model.eval()
    return model, HfAssets(processor)
