"""Model specs as data: the built-in catalogue and `resolve()`, which turns what a user typed into a spec.

Resolution reads only names and small config files; heavy libraries are imported only when a
reference cannot be settled any other way (a bare timm name or an open_clip `arch:tag`).
"""

from __future__ import annotations

import difflib
from pathlib import Path

from vitkit.errors import ModelTaskMismatchError, UnknownModelError, UsageError
from vitkit.models.spec import (ASK, ATTENTION, CAPABILITIES, CAPTION, CLASSIFY, CLIP_CAPABILITIES, DEPTH, DETECT, EMBED,
                                INPAINT, LABEL, OPEN_CLIP, POSE, SEARCH, SEGMENT, TIMM, TIMM_CAPABILITIES, TRANSFORMERS,
                                VLM_CAPABILITIES, ModelSpec, describe_capability)

__all__ = ["ASK", "ATTENTION", "CAPABILITIES", "CAPTION", "CLASSIFY", "DEPTH", "DETECT", "EMBED", "INPAINT", "LABEL",
           "OPEN_CLIP", "POSE",
           "SEARCH", "SEGMENT", "TIMM", "TRANSFORMERS", "ModelSpec", "resolve", "resolve_any", "list_catalogue",
           "get_default_model"]

# For hub references that do not say which library they belong to (`hf-hub:org/repo`, `org/repo`) and
# whose config is not in the cache, the command the model is for decides.
BACKEND_FOR_CAPABILITY = {
    CLASSIFY: TIMM,
    LABEL: OPEN_CLIP,
    SEARCH: OPEN_CLIP,
    EMBED: TIMM,
    ATTENTION: TIMM,
    CAPTION: OPEN_CLIP,
    DETECT: TRANSFORMERS,
    SEGMENT: TRANSFORMERS,
    INPAINT: TRANSFORMERS,
    DEPTH: TRANSFORMERS,
    POSE: TRANSFORMERS,
    ASK: TRANSFORMERS,
}


class AmbiguousModelError(UsageError):
    """A hub id that several libraries could have saved, with nothing yet to tell which."""


def _alias(alias: str, backend: str, source: str, caps: frozenset[str], desc: str, params: float | None,
           hub_repo: str | None = None) -> ModelSpec:
    # transformers and hf-hub: sources name their repo; open_clip's pretrained tags are given it here so
    # that listing the catalogue needs no library.
    if hub_repo is None:
        hub_repo = source.removeprefix("hf-hub:") if source.startswith("hf-hub:") or backend == TRANSFORMERS else None
    return ModelSpec(alias, backend, source, caps, desc, params, hub_repo=hub_repo)


_C = TIMM_CAPABILITIES
_SELF_SUPERVISED = frozenset({EMBED, ATTENTION})  # no classifier head
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
        _alias("eva02-b", TIMM, "hf-hub:timm/eva02_base_patch14_448.mim_in22k_ft_in22k_in1k", _C - {ATTENTION},
               "EVA-02 B/14 at 448 px, MIM + ImageNet-22k, ImageNet-1k fine-tune (88.7% top-1)", 87.1),
        _alias("dino-s16", TIMM, "hf-hub:timm/vit_small_patch16_224.dino", _SELF_SUPERVISED,
               "DINO ViT-S/16, self-supervised on ImageNet-1k (77.0% linear, 74.5% k-NN top-1)", 21.7),
        _alias("dino-b16", TIMM, "hf-hub:timm/vit_base_patch16_224.dino", _SELF_SUPERVISED,
               "DINO ViT-B/16, self-supervised on ImageNet-1k (78.2% linear, 76.1% k-NN top-1)", 85.8),
        _alias("dinov2-s14", TIMM, "hf-hub:timm/vit_small_patch14_dinov2.lvd142m", _SELF_SUPERVISED,
               "DINOv2 ViT-S/14 at 518 px, self-supervised on LVD-142M (81.1% linear, 79.0% k-NN top-1)", 22.1),
        _alias("clip-b32", OPEN_CLIP, "ViT-B-32:laion2b_s34b_b79k", CLIP_CAPABILITIES,
               "OpenCLIP ViT-B/32 trained on LAION-2B (66.6% zero-shot ImageNet), fast on CPU", 151.3,
               "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"),
        _alias("clip-b16", OPEN_CLIP, "ViT-B-16:laion2b_s34b_b88k", CLIP_CAPABILITIES,
               "OpenCLIP ViT-B/16 trained on LAION-2B (70.2% zero-shot ImageNet)", 149.6,
               "laion/CLIP-ViT-B-16-laion2B-s34B-b88K"),
        _alias("siglip-b16", OPEN_CLIP, "ViT-B-16-SigLIP:webli", CLIP_CAPABILITIES,
               "SigLIP ViT-B/16 trained on WebLI (76.0% zero-shot ImageNet)", 203.2, "timm/ViT-B-16-SigLIP"),
        _alias("coca-b32", OPEN_CLIP, "coca_ViT-B-32:mscoco_finetuned_laion2b_s13b_b90k",
               CLIP_CAPABILITIES | {CAPTION}, "CoCa ViT-B/32, LAION-2B, fine-tuned for MS-COCO captions", 253.6,
               "laion/mscoco_finetuned_CoCa-ViT-B-32-laion2B-s13B-b90k"),
        _alias("detr-r50", TRANSFORMERS, "facebook/detr-resnet-50", frozenset({DETECT}),
               "DETR ResNet-50 (timm backbone), COCO 2017 detection (42.0 AP)", 41.3),
        _alias("segformer-b0", TRANSFORMERS, "nvidia/segformer-b0-finetuned-ade-512-512", frozenset({SEGMENT}),
               "SegFormer-B0, ADE20K semantic segmentation (37.4 mIoU)", 3.8),
        _alias("mask2former-swin-t", TRANSFORMERS, "facebook/mask2former-swin-tiny-coco-panoptic",
               frozenset({SEGMENT}), "Mask2Former Swin-T, COCO panoptic (53.2 PQ)", 47.4),
        _alias("clipseg", TRANSFORMERS, "CIDAS/clipseg-rd64-refined", frozenset({SEGMENT}),
               "CLIPSeg ViT-B/16, text-prompted segmentation", 150.7),
        _alias("sam-b", TRANSFORMERS, "facebook/sam-vit-base", frozenset({SEGMENT}),
               "Segment Anything ViT-B, SA-1B (11M images, 1.1B masks), promptable and automatic masks", 93.7),
        _alias("mae-base", TRANSFORMERS, "facebook/vit-mae-base", frozenset({INPAINT}),
               "MAE ViT-B/16 with its decoder, ImageNet-1k self-supervised", 111.9),
        _alias("mae-large", TRANSFORMERS, "facebook/vit-mae-large", frozenset({INPAINT}),
               "MAE ViT-L/16 with its decoder, ImageNet-1k self-supervised", 329.5),
        _alias("depth-anything-s", TRANSFORMERS, "depth-anything/Depth-Anything-V2-Small-hf", frozenset({DEPTH}),
               "Depth Anything V2 Small (ViT-S), relative depth (95.3% on the DA-2K benchmark)", 24.8),
        _alias("dpt-large", TRANSFORMERS, "Intel/dpt-large", frozenset({DEPTH}),
               "DPT-Large (MiDaS v3.0, ViT-L/16 at 384 px), relative inverse depth, 1.4M training images "
               "(zero-shot transfer error 10.82 on MIX 6, its model card)", 343.0),
        _alias("vitpose-b", TRANSFORMERS, "usyd-community/vitpose-base-simple", frozenset({POSE}),
               "ViTPose-B, simple decoder, 256x192 crops, COCO-17 keypoints (75.5 AP on COCO val2017 with "
               "its authors' 56-AP person boxes)", 86.0),
        _alias("owlv2-b", TRANSFORMERS, "google/owlv2-base-patch16-ensemble", frozenset({DETECT}),
               "OWLv2 B/16 ST/FT ensemble, open-vocabulary detection from text prompts (43.9 AP, 40.5 APr "
               "on LVIS)", 155.0),
        _alias("grounding-dino-t", TRANSFORMERS, "IDEA-Research/grounding-dino-tiny", frozenset({DETECT}),
               "Grounding DINO Swin-T, open-vocabulary detection from text prompts (48.4 AP zero-shot COCO)", 172.0),
        _alias("smolvlm-256m", TRANSFORMERS, "HuggingFaceTB/SmolVLM-256M-Instruct", VLM_CAPABILITIES,
               "SmolVLM-256M-Instruct (Idefics3: SigLIP-B/16 93M + SmolLM2-135M), questions and captions on a CPU",
               256.5),
        _alias("smolvlm-500m", TRANSFORMERS, "HuggingFaceTB/SmolVLM-500M-Instruct", VLM_CAPABILITIES,
               "SmolVLM-500M-Instruct (Idefics3: SigLIP-B/16 93M + SmolLM2-360M), a larger language model",
               507.5),
        _alias("florence-2-b", TRANSFORMERS, "florence-community/Florence-2-base", frozenset({CAPTION}),
               "Florence-2 base (DaViT + BART), captions through its own tasks (--detail brief|detailed|paragraph); "
               "parameters counted from the architecture", 231.4),
        _alias("llava-1.5-7b", TRANSFORMERS, "llava-hf/llava-1.5-7b-hf", VLM_CAPABILITIES,
               "LLaVA-1.5 7B (CLIP ViT-L/14 at 336 px + Vicuna-7B), a GPU model (about 14 GB in bf16)", 7063.4),
    )
}

DEFAULT_MODELS = {
    CLASSIFY: "vit-b16",
    LABEL: "clip-b32",
    SEARCH: "clip-b32",
    EMBED: "dino-s16",  # visual similarity; index and search keep clip-b32 (text and images in one space)
    ATTENTION: "dino-s16",
    CAPTION: "coca-b32",
    DETECT: "detr-r50",
    SEGMENT: "segformer-b0",
    INPAINT: "mae-large",
    DEPTH: "depth-anything-s",
    POSE: "vitpose-b",
    ASK: "smolvlm-256m",  # the smallest instruction-tuned VLM with a chat template: runs on a laptop CPU
}

# `detect --prompt` without --model: detection from text needs a model that reads it.
DEFAULT_OPEN_VOCABULARY_DETECT_MODEL = "owlv2-b"
# Segmentation has one capability but three modes, each with its own default model.
DEFAULT_SEGMENT_MODELS = {"semantic": "segformer-b0", "panoptic": "mask2former-swin-t", "text": "clipseg",
                         "prompt": "sam-b", "auto": "sam-b"}


def list_catalogue() -> list[ModelSpec]:
    return list(CATALOGUE.values())


def get_default_model(capability: str) -> str:
    return DEFAULT_MODELS[capability]


def resolve(reference: str | None, capability: str) -> ModelSpec:
    """Turn a `--model` value (or None for the default) into a spec able to do `capability`."""
    spec = resolve_any(reference or DEFAULT_MODELS[capability], capability)
    if capability not in spec.capabilities:
        can_do = ", ".join(describe_capability(c) for c in sorted(spec.capabilities)) or "nothing vitkit runs"
        default = DEFAULT_MODELS[capability]
        raise ModelTaskMismatchError(
            f"model {spec.id!r} ({spec.backend}) cannot {describe_capability(capability)}; it can: {can_do}",
            hint=f"pick a model from `vitkit models list --task {capability}`, e.g. --model {default}",
        )
    return spec


def resolve_any(reference: str, capability: str | None = None) -> ModelSpec:
    """Resolve without checking capabilities. A hub id that any library could have saved is settled by
    its config in the local cache, else by `capability`; AmbiguousModelError when neither can tell."""
    from vitkit.models.backends import get_backend

    reference = reference.strip()
    if reference in CATALOGUE:
        return CATALOGUE[reference]
    if reference.startswith("local-dir:"):
        return inspect_local_folder(Path(reference.removeprefix("local-dir:")).expanduser(), reference)
    if _looks_like_path(reference):
        return inspect_local_folder(Path(reference).expanduser(), reference)
    if reference.startswith("timm/"):
        return get_backend(TIMM).spec_for_hub(reference, reference, None)
    if reference.startswith("hf-hub:"):
        return _hub_spec(reference, reference.removeprefix("hf-hub:"), capability)
    if ":" in reference:
        return get_backend(OPEN_CLIP).resolve_name(reference)
    if reference.count("/") == 1:
        return _hub_spec(reference, reference, capability)
    return get_backend(TIMM).resolve_name(reference)


def _looks_like_path(reference: str) -> bool:
    if Path(reference).expanduser().exists():
        return True
    return reference.startswith(("/", "./", "../", "~", ".\\")) or reference.count("/") > 1


def _hub_spec(reference: str, repo_id: str, capability: str | None) -> ModelSpec:
    from vitkit.models.backends import get_backend, list_backends
    from vitkit.models.cache import cached_snapshot

    snapshot = cached_snapshot(repo_id.split("@")[0])
    if snapshot is not None:
        for backend in list_backends():
            if backend.spec_for_folder(snapshot, reference) is not None:
                return backend.spec_for_hub(reference, repo_id, snapshot)
    if capability is None:
        raise AmbiguousModelError(
            f"{reference!r} could be a timm, open_clip or transformers model, and its config is not in the cache",
            hint=f"say which command it is for with --task ({', '.join(CAPABILITIES)})",
        )
    return get_backend(BACKEND_FOR_CAPABILITY[capability]).spec_for_hub(reference, repo_id, None)


def inspect_local_folder(path: Path, reference: str) -> ModelSpec:
    """Tell which library saved a folder from the files in it (DESIGN.md: local folders)."""
    from vitkit.models.backends import list_backends

    if not path.is_dir():
        raise UnknownModelError(
            f"model folder {str(path)!r} does not exist" if not path.exists() else f"{str(path)!r} is a file, not a model folder",
            hint="pass a folder saved by timm (save_for_hf), open_clip or transformers (save_pretrained)",
        )
    for backend in list_backends():
        if (spec := backend.spec_for_folder(path, reference)) is not None:
            return spec
    raise UnknownModelError(
        f"folder {str(path)!r} is not a model folder vitkit recognises",
        hint="expected open_clip_config.json (open_clip), or config.json with 'architecture' (timm) or 'model_type' (transformers)",
    )


def raise_unknown(reference: str, more_names: list[str]) -> None:
    matches = difflib.get_close_matches(reference, list(CATALOGUE) + more_names, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(matches)}?" if matches else "see `vitkit models list`"
    raise UnknownModelError(f"unknown model {reference!r}", hint=hint)
