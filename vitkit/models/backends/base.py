"""The contract every library backend honours, so the registry and the loader never name a library."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

from vitkit.models.spec import ModelSpec

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ClassNames:
    """A model's class names as far as they are known without loading its weights."""

    names: tuple[str, ...] | None  # None: not known (see `note`)
    note: str = ""  # why they are unknown, or where they come from


@dataclass(frozen=True)
class Classifier:
    """What `classify` needs from a loaded image classifier, whichever library made it."""

    preprocess: Callable[[Any], Any]  # picklable: PIL image -> model inputs, in dataloader workers
    labels: tuple[str, ...]  # class id -> name
    scores: Callable[[Any, Any], Any]  # (module, batch on the device) -> (B, C) float32 class scores
    collate_inputs: Callable[[list[Any]], Any] | None = None  # picklable; None: torch's default_collate


class ClassifierBackend(Protocol):
    """A backend whose models `classify` can run (timm, transformers); optional."""

    def classifier(self, module: "torch.nn.Module", assets: Any) -> Classifier:
        ...


@dataclass(frozen=True)
class ImageEmbedder:
    """What `embed` needs from a loaded model: its pooled image vector, whichever library made it."""

    preprocess: Callable[[Any], Any]  # picklable: PIL image -> (3, H, W), the checkpoint's own eval transform
    vectors: Callable[[Any, Any], Any]  # (module, (B, 3, H, W) on the device) -> (B, dim), not normalised
    dim: int  # the vectors' length from the config, so a run with no ok input still writes (0, dim); 0: unknown


class ImageEmbedderBackend(Protocol):
    """A backend whose models `embed` can run (timm, open_clip); optional."""

    def image_embedder(self, module: "torch.nn.Module", assets: Any) -> ImageEmbedder:
        ...


class Backend(Protocol):
    """One library (timm, open_clip, transformers). Importing a backend module is cheap: the library
    itself is imported only inside the methods that need it."""

    name: str

    def resolve_name(self, reference: str) -> ModelSpec:
        """A library-native name (timm `vit_base_patch16_224.augreg_in1k`, open_clip `ARCH:TAG`) -> spec;
        raises UnknownModelError, never settles for random weights."""
        ...

    def spec_for_folder(self, path: Path, reference: str) -> ModelSpec | None:
        """The spec for a folder in this library's own save format; None when the folder is not one."""
        ...

    def spec_for_hub(self, reference: str, repo_id: str, snapshot: Path | None) -> ModelSpec:
        """A Hugging Face Hub repo; `snapshot` is its cached folder when its config is in the cache."""
        ...

    def load(self, spec: ModelSpec, capability: str | None, trust_remote_code: bool) -> tuple["torch.nn.Module", Any]:
        """(module in eval mode, the library's assets: transform, tokenizer, processor, labels)."""
        ...

    def draft_size(self, assets: Any) -> int | None:
        """The shorter side the model's preprocessing resizes to, for draft JPEG decoding; None: decode in full."""
        ...

    def hot_module(self, module: "torch.nn.Module") -> "torch.nn.Module":
        """The part that runs on every image batch: what --compile compiles."""
        ...

    def hub_repo_id(self, spec: ModelSpec) -> str | None:
        """The Hugging Face repo a (non-local) spec's weights come from, for cache look-ups."""
        ...

    def class_names(self, spec: ModelSpec) -> ClassNames:
        """Class names without loading weights: from the library's metadata, a local folder or the cache."""
        ...


def hub_source_repo(spec: ModelSpec) -> str | None:
    """`hf-hub:org/repo@rev` -> `org/repo`, or the spec's own `hub_repo`; None for local folders."""
    if spec.is_local:
        return None
    if spec.hub_repo:
        return spec.hub_repo
    if spec.source.startswith("hf-hub:"):
        return spec.source.removeprefix("hf-hub:").split("@")[0]
    return None


def read_json_object(path: Path) -> dict[str, Any]:
    """A model folder's JSON config; UnknownModelError when it is unreadable or not an object."""
    import json

    from vitkit.errors import UnknownModelError

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UnknownModelError(f"cannot read {str(path)!r}: {exc}", hint="re-save the model folder") from exc
    if not isinstance(data, dict):
        raise UnknownModelError(f"{str(path)!r} does not hold a JSON object", hint="re-save the model folder")
    return data


def read_config(folder: Path | None, name: str) -> dict[str, Any] | None:
    """`folder/name` as a JSON object, or None when there is no such file."""
    if folder is None or not (folder / name).is_file():
        return None
    return read_json_object(folder / name)
