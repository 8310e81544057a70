"""Pre-downloading models into the Hugging Face cache, so later runs work offline."""

from __future__ import annotations

from vitkit.errors import ModelNotCachedError
from vitkit.models.registry import AmbiguousModelError, ModelSpec, resolve_any


def pull_model(name: str, capability: str | None = None, offline: bool = False) -> ModelSpec:
    """Download (or find in the cache) one model by loading it once on the CPU; its spec.
    Raises ModelNotCachedError when the Hub cannot be reached, other VitkitErrors as loading does."""
    from vitkit.models.loading import load_model

    spec = _resolve_for_pull(name, capability, offline)
    try:
        load_model(spec, capability, device="cpu", precision="fp32", offline=offline)
    except ModelNotCachedError as exc:
        raise ModelNotCachedError(f"cannot download {name}: the Hugging Face Hub cannot be reached",
                                  hint="check the network, HF_ENDPOINT and proxy settings") from exc
    return spec


def _resolve_for_pull(name: str, capability: str | None, offline: bool) -> ModelSpec:
    """An ambiguous hub id is settled by downloading its config first, which says which library saved it."""
    try:
        return resolve_any(name, capability)
    except AmbiguousModelError:
        from vitkit.models.cache import fetch_config

        if not fetch_config(name.removeprefix("hf-hub:").split("@")[0], offline):
            raise
        return resolve_any(name, capability)
