"""What the Hugging Face cache holds for a spec: the repo it comes from and its size on disk."""

from __future__ import annotations

from vitkit.models.registry import OPEN_CLIP, TIMM, TRANSFORMERS, ModelSpec


def get_hub_repo_id(spec: ModelSpec) -> str | None:
    if spec.is_local:
        return None
    if spec.source.startswith("hf-hub:"):
        return spec.source.removeprefix("hf-hub:").split("@")[0]
    if spec.backend == TRANSFORMERS:
        return spec.source
    if spec.backend == OPEN_CLIP:
        import open_clip

        arch, _, tag = spec.source.partition(":")
        return (open_clip.get_pretrained_cfg(arch, tag).get("hf_hub") or "").strip("/") or None
    if spec.backend == TIMM:
        import timm.models

        cfg = timm.models.get_pretrained_cfg(spec.source)
        return getattr(cfg, "hf_hub_id", None)
    return None


def get_cached_sizes() -> dict[str, int]:
    """Bytes on disk per cached model repo; empty when there is no cache yet."""
    from huggingface_hub import scan_cache_dir

    try:
        info = scan_cache_dir()
    except Exception:  # noqa: BLE001 - a missing or odd cache just means nothing is cached
        return {}
    return {repo.repo_id: repo.size_on_disk for repo in info.repos if repo.repo_type == "model"}


def format_bytes(size: int | None) -> str:
    if size is None:
        return ""
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return ""
