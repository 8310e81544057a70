"""What the Hugging Face cache holds for a spec: the repo it comes from, its cached config and its size on disk."""

from __future__ import annotations

from pathlib import Path

from vitkit.models.spec import ModelSpec

# The files a library's config lives in; any of them in the cache shows which library saved a repo.
_CONFIG_FILES = ("open_clip_config.json", "config.json")


def get_hub_repo_id(spec: ModelSpec) -> str | None:
    """The repo a spec's weights come from; None for local folders. Catalogue entries know it without
    importing any library; other specs ask their backend."""
    if spec.is_local:
        return None
    if spec.hub_repo:
        return spec.hub_repo
    from vitkit.models.backends import get_backend

    return get_backend(spec.backend).hub_repo_id(spec)


def cached_snapshot(repo_id: str | None) -> Path | None:
    """The cached folder of a hub repo whose config file is in the local cache; None otherwise."""
    if not repo_id:
        return None
    from huggingface_hub import try_to_load_from_cache

    for name in _CONFIG_FILES:
        try:
            found = try_to_load_from_cache(repo_id, name)
        except Exception:  # noqa: BLE001 - an id the hub would reject simply is not cached
            return None
        if isinstance(found, str):
            return Path(found).parent
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


def fetch_config(repo_id: str, offline: bool = False) -> bool:
    """Download a hub repo's config file into the cache (whichever library's it has); False if none came."""
    from huggingface_hub import hf_hub_download

    from vitkit.models.loading import prepare_hub_access

    prepare_hub_access(offline)
    for name in _CONFIG_FILES:
        try:
            hf_hub_download(repo_id, name)
            return True
        except Exception:  # noqa: BLE001 - missing file, no network: the caller reports what it can
            continue
    return False
