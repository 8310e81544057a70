"""open_clip: CLIP/SigLIP/CoCa models with their own image transform and tokenizer, and the zero-shot
pieces built from them (prompt templates, text classifiers, logit scale and bias)."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from vitkit.errors import ModelLoadError, UnknownModelError
from vitkit.models.backends.base import ClassNames, ImageEmbedder, hub_source_repo, read_config
from vitkit.models.spec import CAPTION, CLIP_CAPABILITIES, OPEN_CLIP, ModelSpec

if TYPE_CHECKING:
    import torch

CONFIG_FILE = "open_clip_config.json"


@dataclass(frozen=True)
class OpenClipAssets:
    transform: Callable[[Any], "torch.Tensor"]  # open_clip's eval preprocess, aspect-capped
    tokenizer: Callable[..., "torch.Tensor"]


def capabilities_of(model_cfg: dict[str, Any] | None) -> frozenset[str]:
    """Every open_clip model labels and embeds; a text decoder (`multimodal_cfg`: CoCa) also captions.
    None (config not known yet) allows captioning; the caption task checks the loaded model."""
    if model_cfg is None or "multimodal_cfg" in model_cfg:
        return CLIP_CAPABILITIES | {CAPTION}
    return CLIP_CAPABILITIES


class OpenClipBackend:
    name = OPEN_CLIP

    def resolve_name(self, reference: str) -> ModelSpec:
        import open_clip

        arch, _, tag = reference.partition(":")
        if arch not in open_clip.list_models():
            from vitkit.models.registry import raise_unknown

            raise_unknown(reference, [f"{a}:{t}" for a, t in open_clip.list_pretrained()])
        tags = open_clip.list_pretrained_tags_by_model(arch)
        if tag not in tags:
            # An unknown tag must never become random weights.
            raise UnknownModelError(
                f"open_clip model {arch!r} has no pretrained weights tagged {tag!r}",
                hint=f"known tags: {', '.join(tags) or 'none'}",
            )
        return ModelSpec(reference, OPEN_CLIP, reference, capabilities_of(open_clip.get_model_config(arch)))

    def spec_for_folder(self, path: Path, reference: str) -> ModelSpec | None:
        config = read_config(path, CONFIG_FILE)
        if config is None:
            return None
        local = str(path.resolve())
        return ModelSpec(reference, OPEN_CLIP, f"local-dir:{local}", capabilities_of(config.get("model_cfg", {})),
                         local_path=local)

    def spec_for_hub(self, reference: str, repo_id: str, snapshot: Path | None) -> ModelSpec:
        config = read_config(snapshot, CONFIG_FILE)
        return ModelSpec(reference, OPEN_CLIP, f"hf-hub:{repo_id}",
                         capabilities_of(None if config is None else config.get("model_cfg", {})))

    def load(self, spec: ModelSpec, capability: str | None = None,
             trust_remote_code: bool = False) -> tuple["torch.nn.Module", OpenClipAssets]:
        return load_open_clip(spec)

    def draft_size(self, assets: OpenClipAssets) -> int | None:
        return resize_size(assets.transform)

    def hot_module(self, module: "torch.nn.Module") -> "torch.nn.Module":
        # The image tower runs on every batch; the text tower once per label set, not worth compiling.
        return getattr(module, "visual", module)

    def image_embedder(self, module: "torch.nn.Module", assets: OpenClipAssets) -> ImageEmbedder:
        # A timm image tower (open_clip's TimmModel) does not state its width: 0, unknown until a row comes.
        return ImageEmbedder(assets.transform, image_vectors, int(getattr(module.visual, "output_dim", 0) or 0))

    def hub_repo_id(self, spec: ModelSpec) -> str | None:
        if spec.is_local or (repo := hub_source_repo(spec)):
            return None if spec.is_local else repo
        import open_clip

        arch, _, tag = spec.source.partition(":")
        return (open_clip.get_pretrained_cfg(arch, tag).get("hf_hub") or "").strip("/") or None

    def class_names(self, spec: ModelSpec) -> ClassNames:
        return ClassNames(None, "none of its own: `vitkit label` scores the class names you give with --labels")


def load_open_clip(spec: ModelSpec) -> tuple["torch.nn.Module", OpenClipAssets]:
    import open_clip
    from open_clip.factory import _find_checkpoint_in_dir
    from open_clip.pretrained import download_pretrained_from_hf

    from vitkit.models.backends.aspect import cap_aspect_ratio

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


def image_vectors(model: "torch.nn.Module", images: "torch.Tensor") -> "torch.Tensor":
    """(B, 3, H, W) -> (B, D): `encode_image` as it comes, not normalised."""
    return model.encode_image(images)


def encode_images(model: "torch.nn.Module", images: "torch.Tensor") -> "torch.Tensor":
    """(B, 3, H, W) -> (B, D) unit vectors in float32."""
    import torch

    return torch.nn.functional.normalize(model.encode_image(images).float(), dim=-1)


def encode_texts(model: "torch.nn.Module", tokenizer: Callable[..., "torch.Tensor"], texts: list[str],
                 device: "torch.device") -> "torch.Tensor":
    """list of N strings -> (N, D) unit vectors in float32."""
    import torch

    tokens = tokenizer(texts).to(device)
    return torch.nn.functional.normalize(model.encode_text(tokens).float(), dim=-1)


def imagenet_templates(full: bool) -> list[str]:
    """The CLIP authors' ImageNet prompt templates as format strings: all 80, or their 7-prompt subset."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

    return [template("{}") for template in (OPENAI_IMAGENET_TEMPLATES if full else SIMPLE_IMAGENET_TEMPLATES)]


def build_text_classifier(model: "torch.nn.Module", tokenizer: Callable[..., "torch.Tensor"], labels: Sequence[str],
                          templates: Sequence[str], device: "torch.device") -> "torch.Tensor":
    """(D, C) unit columns: each label's mean text embedding over the templates (open_clip's own builder).
    The caller provides inference mode and autocast."""
    import torch
    from open_clip import build_zero_shot_classifier

    weights = build_zero_shot_classifier(model, tokenizer, list(labels), list(templates),
                                         num_classes_per_batch=16, device=device)
    return torch.nn.functional.normalize(weights.float(), dim=0)


def logit_scale_and_bias(model: "torch.nn.Module") -> tuple[float, float | None]:
    """The learned temperature (exp'd) and, for sigmoid-trained models (SigLIP), the learned bias."""
    bias = getattr(model, "logit_bias", None)
    return float(model.logit_scale.detach().exp()), None if bias is None else float(bias.detach())


BACKEND = OpenClipBackend()
