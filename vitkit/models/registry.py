"""Model specs as data: the built-in catalogue and `resolve()`, which turns what a user typed into a spec.

Resolution reads only names and small config files; heavy libraries are imported only when a
reference cannot be settled any other way (a bare timm name or an open_clip `arch:tag`).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path

from vitkit.errors import ModelTaskMismatchError, UnknownModelError

# What a command needs a model to be able to do.
CLASSIFY = "classify"
ZEROSHOT = "zeroshot"
EMBED = "embed"
CAPTION = "caption"
DETECT = "detect"
SEGMENT = "segment"
INPAINT = "inpaint"

TIMM = "timm"
OPEN_CLIP = "open_clip"
TRANSFORMERS = "transformers"

CLIP_CAPABILITIES = frozenset({ZEROSHOT, EMBED})

# For references that do not say which library they belong to (`hf-hub:org/repo`, `org/repo`),
# the capability the command needs decides.
BACKEND_FOR_CAPABILITY = {
    CLASSIFY: TIMM,
    ZEROSHOT: OPEN_CLIP,
    EMBED: OPEN_CLIP,
    CAPTION: OPEN_CLIP,
    DETECT: TRANSFORMERS,
    SEGMENT: TRANSFORMERS,
    INPAINT: TRANSFORMERS,
}


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to load a model, and nothing that needs the weights."""

    id: str  # what the user sees: a catalogue alias or the reference as typed
    backend: str
    source: str  # the library-native reference handed to the backend
    capabilities: frozenset[str]
    description: str = ""
    params_millions: float | None = None
    local_path: str | None = None
    extra: tuple[tuple[str, str], ...] = field(default=())

    @property
    def is_local(self) -> bool:
        return self.local_path is not None

    def describe_source(self) -> str:
        return self.source if self.source == self.id else f"{self.id} ({self.source})"


def _alias(alias: str, backend: str, source: str, caps: frozenset[str], desc: str, params: float) -> ModelSpec:
    return ModelSpec(alias, backend, source, caps, desc, params)


_C = frozenset({CLASSIFY})
CATALOGUE: dict[str, ModelSpec] = {
    s.id: s
    for s in (
        _alias("vit-b16", TIMM, "hf-hub:timm/vit_base_patch16_224.augreg2_in21k_ft_in1k", _C,
               "ViT-B/16, ImageNet-21k pretrain, ImageNet-1k fine-tune (85.1% top-1)", 86.6),
        _alias("vit-s16", TIMM, "hf-hub:timm/vit_small_patch16_224.augreg_in21k_ft_in1k", _C,
               "ViT-S/16, ImageNet-21k pretrain, ImageNet-1k fine-tune (81.4% top-1), CPU-friendly", 22.1),
        _alias("vit-l16", TIMM, "hf-hub:timm/vit_large_patch16_224.augreg_in21k_ft_in1k", _C,
               "ViT-L/16, ImageNet-21k pretrain, ImageNet-1k fine-tune (85.8% top-1)", 304.3),
        _alias("deit3-b16", TIMM, "hf-hub:timm/deit3_base_patch16_224.fb_in22k_ft_in1k", _C,
               "DeiT III B/16, ImageNet-22k pretrain, ImageNet-1k fine-tune (85.7% top-1)", 86.6),
        _alias("eva02-b", TIMM, "hf-hub:timm/eva02_base_patch14_448.mim_in22k_ft_in22k_in1k", _C,
               "EVA-02 B/14 at 448 px, MIM + ImageNet-22k, ImageNet-1k fine-tune (88.7% top-1)", 87.1),
        _alias("clip-b32", OPEN_CLIP, "ViT-B-32:laion2b_s34b_b79k", CLIP_CAPABILITIES,
               "OpenCLIP ViT-B/32 trained on LAION-2B (66.6% zero-shot ImageNet), fast on CPU", 151.3),
        _alias("clip-b16", OPEN_CLIP, "ViT-B-16:laion2b_s34b_b88k", CLIP_CAPABILITIES,
               "OpenCLIP ViT-B/16 trained on LAION-2B (70.2% zero-shot ImageNet)", 149.6),
        _alias("siglip-b16", OPEN_CLIP, "ViT-B-16-SigLIP:webli", CLIP_CAPABILITIES,
               "SigLIP ViT-B/16 trained on WebLI (76.0% zero-shot ImageNet)", 203.2),
        _alias("coca-b32", OPEN_CLIP, "coca_ViT-B-32:mscoco_finetuned_laion2b_s13b_b90k",
               CLIP_CAPABILITIES | {CAPTION}, "CoCa ViT-B/32, LAION-2B, fine-tuned for MS-COCO captions", 253.6),
        _alias("detr-r50", TRANSFORMERS, "facebook/detr-resnet-50", frozenset({DETECT}),
               "DETR ResNet-50 (timm backbone), COCO 2017 detection (42.0 AP)", 41.3),
        _alias("segformer-b0", TRANSFORMERS, "nvidia/segformer-b0-finetuned-ade-512-512", frozenset({SEGMENT}),
               "SegFormer-B0, ADE20K semantic segmentation (37.4 mIoU)", 3.8),
        _alias("mask2former-swin-t", TRANSFORMERS, "facebook/mask2former-swin-tiny-coco-panoptic",
               frozenset({SEGMENT}), "Mask2Former Swin-T, COCO panoptic (53.2 PQ)", 47.4),
        _alias("clipseg", TRANSFORMERS, "CIDAS/clipseg-rd64-refined", frozenset({SEGMENT}),
               "CLIPSeg ViT-B/16, text-prompted segmentation", 150.7),
        _alias("mae-base", TRANSFORMERS, "facebook/vit-mae-base", frozenset({INPAINT}),
               "MAE ViT-B/16 with its decoder, ImageNet-1k self-supervised", 111.9),
        _alias("mae-large", TRANSFORMERS, "facebook/vit-mae-large", frozenset({INPAINT}),
               "MAE ViT-L/16 with its decoder, ImageNet-1k self-supervised", 329.5),
    )
}

DEFAULT_MODELS = {
    CLASSIFY: "vit-b16",
    ZEROSHOT: "clip-b32",
    EMBED: "clip-b32",
    CAPTION: "coca-b32",
    DETECT: "detr-r50",
    SEGMENT: "segformer-b0",
    INPAINT: "mae-large",
}

# Segmentation has one capability but three modes, each with its own default model.
DEFAULT_SEGMENT_MODELS = {"semantic": "segformer-b0", "panoptic": "mask2former-swin-t", "text": "clipseg"}

# transformers names its task heads by suffix; that suffix (not the model's name) says what it can do.
_HF_HEAD_CAPABILITIES = (
    ("ForObjectDetection", DETECT),
    ("ForSemanticSegmentation", SEGMENT),
    ("ForUniversalSegmentation", SEGMENT),
    ("ForImageSegmentation", SEGMENT),
    ("ForSegmentation", SEGMENT),
    ("MAEForPreTraining", INPAINT),
    ("ForImageClassification", CLASSIFY),
)


def list_catalogue() -> list[ModelSpec]:
    return list(CATALOGUE.values())


def get_default_model(capability: str) -> str:
    return DEFAULT_MODELS[capability]


def resolve(reference: str | None, capability: str) -> ModelSpec:
    """Turn a `--model` value (or None for the default) into a spec able to do `capability`."""
    spec = resolve_any(reference or DEFAULT_MODELS[capability], capability)
    if capability not in spec.capabilities:
        can_do = ", ".join(sorted(spec.capabilities)) or "nothing vitkit runs"
        default = DEFAULT_MODELS[capability]
        raise ModelTaskMismatchError(
            f"model {spec.id!r} ({spec.backend}) cannot {capability}; it can: {can_do}",
            hint=f"pick a {capability} model from `vitkit models list`, e.g. --model {default}",
        )
    return spec


def resolve_any(reference: str, capability: str | None = None) -> ModelSpec:
    """Resolve without checking capabilities; `capability` only settles which library an ambiguous hub id is for."""
    reference = reference.strip()
    if reference in CATALOGUE:
        return CATALOGUE[reference]
    if reference.startswith("local-dir:"):
        return inspect_local_folder(Path(reference.removeprefix("local-dir:")).expanduser(), reference)
    if _looks_like_path(reference):
        return inspect_local_folder(Path(reference).expanduser(), reference)
    backend = BACKEND_FOR_CAPABILITY.get(capability or CLASSIFY, TIMM)
    if reference.startswith("hf-hub:"):
        return _hub_spec(reference, reference.removeprefix("hf-hub:"), backend)
    if reference.startswith("timm/"):
        return _hub_spec(reference, reference, TIMM)
    if ":" in reference:
        return _open_clip_spec(reference)
    if reference.count("/") == 1:
        return _hub_spec(reference, reference, backend)
    return _timm_name_spec(reference)


def _looks_like_path(reference: str) -> bool:
    if Path(reference).expanduser().exists():
        return True
    return reference.startswith(("/", "./", "../", "~", ".\\")) or reference.count("/") > 1


def _hub_spec(reference: str, repo_id: str, backend: str) -> ModelSpec:
    caps = {TIMM: frozenset({CLASSIFY}), OPEN_CLIP: CLIP_CAPABILITIES | {CAPTION}}.get(backend)
    if backend == TRANSFORMERS:
        # Without the config we cannot tell the head; the command's own check happens at load time.
        caps = frozenset({DETECT, SEGMENT, INPAINT})
        return ModelSpec(reference, backend, repo_id, caps)
    return ModelSpec(reference, backend, f"hf-hub:{repo_id}", caps or frozenset())


def inspect_local_folder(path: Path, reference: str) -> ModelSpec:
    """Tell which library saved a folder from the files in it (DESIGN.md: local folders)."""
    if not path.is_dir():
        raise UnknownModelError(
            f"model folder {str(path)!r} does not exist" if not path.exists() else f"{str(path)!r} is a file, not a model folder",
            hint="pass a folder saved by timm (save_for_hf), open_clip or transformers (save_pretrained)",
        )
    local = str(path.resolve())
    if (path / "open_clip_config.json").is_file():
        config = _read_json(path / "open_clip_config.json")
        caps = CLIP_CAPABILITIES | ({CAPTION} if "multimodal_cfg" in config.get("model_cfg", {}) else set())
        return ModelSpec(reference, OPEN_CLIP, f"local-dir:{local}", frozenset(caps), local_path=local)
    config = _read_json(path / "config.json") if (path / "config.json").is_file() else {}
    if "architecture" in config:
        return ModelSpec(reference, TIMM, f"local-dir:{local}", frozenset({CLASSIFY}),
                         description=f"timm {config['architecture']}", local_path=local)
    if "model_type" in config:
        heads = config.get("architectures") or []
        caps = {cap for head in heads for suffix, cap in _HF_HEAD_CAPABILITIES if head.endswith(suffix)}
        return ModelSpec(reference, TRANSFORMERS, local, frozenset(caps),
                         description=f"transformers {config['model_type']}", local_path=local)
    raise UnknownModelError(
        f"folder {str(path)!r} is not a model folder vitkit recognises",
        hint="expected open_clip_config.json (open_clip), or config.json with 'architecture' (timm) or 'model_type' (transformers)",
    )


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UnknownModelError(f"cannot read {str(path)!r}: {exc}", hint="re-save the model folder") from exc
    if not isinstance(data, dict):
        raise UnknownModelError(f"{str(path)!r} does not hold a JSON object", hint="re-save the model folder")
    return data


def _open_clip_spec(reference: str) -> ModelSpec:
    import open_clip

    arch, _, tag = reference.partition(":")
    if arch not in open_clip.list_models():
        _raise_unknown(reference, [f"{a}:{t}" for a, t in open_clip.list_pretrained()])
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if tag not in tags:
        # An unknown tag must never become random weights.
        raise UnknownModelError(
            f"open_clip model {arch!r} has no pretrained weights tagged {tag!r}",
            hint=f"known tags: {', '.join(tags) or 'none'}",
        )
    caps = CLIP_CAPABILITIES | ({CAPTION} if arch.startswith("coca") else set())
    return ModelSpec(reference, OPEN_CLIP, reference, frozenset(caps))


def _timm_name_spec(reference: str) -> ModelSpec:
    import timm

    pretrained = timm.list_pretrained()
    if reference in pretrained or timm.list_pretrained(f"{reference}.*"):
        return ModelSpec(reference, TIMM, reference, frozenset({CLASSIFY}))
    if timm.is_model(reference):
        raise UnknownModelError(
            f"timm model {reference!r} has no pretrained weights",
            hint="vitkit never runs random weights; pick a tagged name from `timm.list_pretrained()`",
        )
    _raise_unknown(reference, pretrained)


def _raise_unknown(reference: str, more_names: list[str]) -> None:
    matches = difflib.get_close_matches(reference, list(CATALOGUE) + more_names, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(matches)}?" if matches else "see `vitkit models list`"
    raise UnknownModelError(f"unknown model {reference!r}", hint=hint)
