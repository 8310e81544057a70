"""open_clip: CLIP/SigLIP/CoCa models with their own image transform and tokenizer."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from vitkit.models.backends.aspect import cap_aspect_ratio
from vitkit.errors import ModelLoadError
from vitkit.models.registry import ModelSpec


@dataclass(frozen=True)
class OpenClipAssets:
    transform: Callable[[Any], torch.Tensor]  # open_clip's eval preprocess, aspect-capped
    tokenizer: Callable[..., torch.Tensor]


def load_open_clip(spec: ModelSpec) -> tuple[torch.nn.Module, OpenClipAssets]:
    import open_clip
    from open_clip.factory import _find_checkpoint_in_dir
    from open_clip.pretrained import download_pretrained_from_hf

    # open_clip only warns when a local-dir or hf-hub checkpoint is missing and then builds random
    # weights; fetching the weights first turns that into an error.
    if spec.source.startswith("local-dir:") and not _find_checkpoint_in_dir(Path(spec.source.removeprefix("local-dir:"))):
        raise ModelLoadError(f"model folder {spec.id!r} has no weights file", hint="expected open_clip_model.safetensors")
    if spec.source.startswith("hf-hub:"):
        download_pretrained_from_hf(spec.source.removeprefix("hf-hub:"))
    with _library_errors_silenced():
        if ":" in spec.source and not spec.source.startswith(("local-dir:", "hf-hub:")):
            arch, _, tag = spec.source.partition(":")
            model, _, transform = open_clip.create_model_and_transforms(arch, pretrained=tag)
            tokenizer = open_clip.get_tokenizer(arch)
        else:
            model, _, transform = open_clip.create_model_and_transforms(spec.source)
            tokenizer = open_clip.get_tokenizer(spec.source)
    model.eval()
    return model, OpenClipAssets(cap_aspect_ratio(transform), tokenizer)


@contextlib.contextmanager
def _library_errors_silenced() -> Iterator[None]:
    """open_clip logs a failed download on the root logger and then raises; the loader turns the
    exception into vitkit's one-line message, so the log line would only say it twice."""
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(previous)


def resize_size(transform: Any) -> int | None:
    """Shorter side open_clip's eval transform resizes to, read from the transform itself."""
    for step in getattr(transform, "transforms", ()):
        size = getattr(step, "size", None)
        if type(step).__name__ == "Resize" and size is not None:
            return max(size) if isinstance(size, (tuple, list)) else int(size)
    return None


def encode_images(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, D) unit vectors in float32."""
    return torch.nn.functional.normalize(model.encode_image(images).float(), dim=-1)


def encode_texts(model: torch.nn.Module, tokenizer: Callable[..., torch.Tensor], texts: list[str],
                 device: torch.device) -> torch.Tensor:
    """list of N strings -> (N, D) unit vectors in float32."""
    tokens = tokenizer(texts).to(device)
    return torch.nn.functional.normalize(model.encode_text(tokens).float(), dim=-1)
