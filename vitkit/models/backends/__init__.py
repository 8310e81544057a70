"""One module per library behind the `Backend` protocol (base.py), looked up by `ModelSpec.backend`.

Backend modules import their library only when a model is resolved by library name, or loaded.
"""

from __future__ import annotations

import importlib

from vitkit.errors import ModelLoadError
from vitkit.models.backends.base import Backend
from vitkit.models.spec import OPEN_CLIP, TIMM, TRANSFORMERS

# Order matters for local folders: open_clip's config file is the most specific, transformers' the least.
_MODULES = {OPEN_CLIP: "open_clip_", TIMM: "timm_", TRANSFORMERS: "hf"}


def get_backend(name: str) -> Backend:
    module = _MODULES.get(name)
    if module is None:
        raise ModelLoadError(f"unknown model library {name!r}", hint=f"vitkit knows {', '.join(_MODULES)}")
    return importlib.import_module(f"vitkit.models.backends.{module}").BACKEND


def list_backends() -> list[Backend]:
    return [get_backend(name) for name in _MODULES]
