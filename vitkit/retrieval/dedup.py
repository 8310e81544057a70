"""Dedup: groups of duplicate images among indexed files, each naming the file to keep. Nothing is deleted.

Tiers, strongest first, each judged against the kept file:
  exact    the same bytes (the same content hash, so the same vector row)
  near     the same picture re-encoded, resized, lightly cropped or rotated by EXIF: perceptual hashes
           within phash.NEAR_MAX_BITS, confirmed by an embedding cosine of at least NEAR_FLOOR
  similar  embedding cosine >= threshold (bursts, near-identical shots)
A file linked to the kept one only through other members takes the tier of that chain (near when a
chain of near links joins them); its score is always its own cosine to the kept file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from vitkit.errors import UsageError
from vitkit.retrieval.ann_neighbours import AnnNeighbours
from vitkit.retrieval.approximate import ann_min_files
from vitkit.retrieval.exact import Snapshot, inside_mask
from vitkit.retrieval.grouping import Links, link_items
from vitkit.retrieval.neighbours import ExactNeighbours, NeighbourSearch
from vitkit.retrieval.phash import PerceptualHashes
from vitkit.retrieval.store import IndexReader

if TYPE_CHECKING:
    from vitkit.retrieval.update import IndexCounts, IndexOptions
    from vitkit.runtime.report import Reporter

TIERS = ("exact", "near", "similar")
KEEP_RULES = ("largest", "oldest", "newest", "shortest-path")
# Cosine for `similar`, for CLIP ViT-B/32-like spaces (see README, "Duplicates"): re-exposures and burst
# shots of one scene land around 0.97-0.99; distinct photos of one subject mostly below 0.95.
DEFAULT_THRESHOLD = 0.97
# The cosine a perceptual-hash match must also reach: re-encoded, resized and lightly cropped copies stay
# far above it with CLIP, while two unrelated pictures whose hashes collide (flat skies, dark frames) do not.
NEAR_FLOOR = 0.90


@dataclass(frozen=True)
class Duplicate:
    path: str
    tier: str  # exact, near or similar, relative to the group's kept file
    score: float  # cosine to the kept file (1.0 for exact)


@dataclass(frozen=True)
class DuplicateGroup:
    keep: str
    duplicates: tuple[Duplicate, ...]


@dataclass(frozen=True)
class Catalogue:
    """The files in scope, sorted by path, as columns; an item is one distinct content (vector row)."""

    paths: list[str]
    items: np.ndarray  # (F,) item of each file
    item_rows: np.ndarray  # (n,) sorted vector row of each item
    hashes: list[str]  # (F,) content hash
    pixels: np.ndarray  # (F,) width * height as displayed (0 when unknown)
    sizes: np.ndarray  # (F,) bytes
    mtimes: np.ndarray  # (F,) mtime_ns
    vectors: np.ndarray  # (R, D) float16 unit rows (the mapped vector file)

    def first_file_of_items(self) -> np.ndarray:
        return np.unique(self.items, return_index=True)[1]


@dataclass(frozen=True)
class DedupResult:
    groups: list[DuplicateGroup]
    counts: IndexCounts  # of the incremental update that ran first
    files: int  # files in scope
    unhashable: tuple[tuple[str, str], ...] = ()  # (path, reason): not decodable for the perceptual hash


def check_dedup_options(threshold: float, keep: str) -> None:
    from vitkit.jobs import check_threshold

    check_threshold(threshold, probability=False)  # a cosine; above 1 turns the similar tier off
    if keep not in KEEP_RULES:
        raise UsageError(f"no keep rule {keep!r}", hint=f"use one of {', '.join(KEEP_RULES)}")


def find_duplicates(folders: Sequence[str], threshold: float = DEFAULT_THRESHOLD, keep: str = "largest",
                    options: IndexOptions | None = None, reporter: Reporter | None = None) -> DedupResult:
    """Duplicate groups among the files under `folders` (indexed incrementally first; none: the whole index)."""
    import os

    from vitkit.retrieval.store import open_reader
    from vitkit.retrieval.update import IndexOptions, get_model_key, get_model_ref, index_folders

    check_dedup_options(threshold, keep)
    indexed = index_folders(folders, options or IndexOptions(), reporter)
    under = [os.path.abspath(f) for f in folders] or None
    with open_reader(indexed.folder, get_model_key(indexed.spec), get_model_ref(indexed.spec)) as index:
        if reporter is not None:
            index.warn = lambda text: reporter.message(f"warning: {text}")
        snapshot, catalogue = read_catalogue(index, under)  # the ANN index follows that snapshot too
        hashes = PerceptualHashes(_PathOfItem(catalogue))
        groups = group_duplicates(catalogue, threshold, keep, hashes, neighbour_search(index, snapshot, catalogue))
    return DedupResult(groups, indexed.counts, len(catalogue.paths), hashes.failed)


def neighbour_search(index: IndexReader, snapshot: Snapshot,
                     catalogue: Catalogue) -> Callable[[np.ndarray, np.ndarray], NeighbourSearch]:
    """Exact below approximate.ann_min_files() files in scope (faster there), else the index's ANN."""
    if len(catalogue.paths) < ann_min_files() or len(catalogue.item_rows) < 2:
        return ExactNeighbours
    ann_index = index.ann_index(snapshot)
    return lambda vectors, rows: AnnNeighbours(vectors, rows, ann_index)


def read_catalogue(index: IndexReader, under: Sequence[str] | None) -> tuple[Snapshot, Catalogue]:
    """The files in scope and their details, from one committed state (one read transaction), with
    the snapshot of that state."""
    return index.read_consistently(lambda snapshot: _catalogue_of(index, under, snapshot))


def _catalogue_of(index: IndexReader, under: Sequence[str] | None, snapshot: Snapshot) -> Catalogue:
    chosen = np.flatnonzero(inside_mask(snapshot, under)) if under is not None else np.arange(len(snapshot.paths))
    paths = [snapshot.paths[i] for i in chosen]
    entries = index.stored_entries(paths)
    # Read in the snapshot's own transaction, so every path has its entry; kept as a guard.
    kept = [i for i, path in enumerate(paths) if path in entries]
    paths = [paths[i] for i in kept]
    rows = snapshot.rows[chosen[kept]] if len(kept) else np.empty(0, dtype=np.int64)
    item_rows, items = np.unique(rows, return_inverse=True)
    found = [entries[path][0] for path in paths]
    return Catalogue(paths, items.astype(np.int64), item_rows, [e.content_hash for e in found],
                     np.array([(e.width or 0) * (e.height or 0) for e in found], dtype=np.int64),
                     np.array([e.state.size for e in found], dtype=np.int64),
                     np.array([e.state.mtime_ns for e in found], dtype=np.int64), snapshot.vectors)


def group_duplicates(catalogue: Catalogue, threshold: float, keep: str, hashes: PerceptualHashes,
                     search: Callable[[np.ndarray, np.ndarray], NeighbourSearch] = ExactNeighbours,
                     near_floor: float = NEAR_FLOOR) -> list[DuplicateGroup]:
    """Groups ordered by their kept file's path, members by tier, then score (best first), then path.
    `search` builds the neighbour search over (vectors, item rows)."""
    links = link_items(search(catalogue.vectors, catalogue.item_rows), threshold, near_floor, hashes.agree)
    labels = links.linked[catalogue.items]  # (F,) group label of each file
    order = np.argsort(labels, kind="stable")
    starts = np.flatnonzero(np.diff(labels[order], prepend=-1))
    groups = []
    for members in np.split(order, starts[1:]):
        if len(members) > 1:
            groups.append(_describe_group(catalogue, members, keep, links, hashes, near_floor))
    return sorted(groups, key=lambda group: group.keep)


def _describe_group(catalogue: Catalogue, members: np.ndarray, keep: str, links: Links, hashes: PerceptualHashes,
                    near_floor: float) -> DuplicateGroup:
    kept = choose_keep(catalogue, members, keep)
    kept_item = catalogue.items[kept]
    others = [int(f) for f in members if f != kept]
    rows = catalogue.item_rows[catalogue.items[others]]
    base = np.asarray(catalogue.vectors[catalogue.item_rows[kept_item]], dtype=np.float32)
    scores = np.asarray(catalogue.vectors[rows], dtype=np.float32) @ base  # (M,) cosine to the kept file
    scores = np.clip(scores, -1.0, 1.0)  # float16 rounding may carry a near-identical pair past 1
    duplicates = []
    for f, score in zip(others, scores.tolist()):
        item = catalogue.items[f]
        if catalogue.hashes[f] == catalogue.hashes[kept]:
            duplicates.append(Duplicate(catalogue.paths[f], "exact", 1.0))
            continue
        near = links.near[item] == links.near[kept_item] or (
            score >= near_floor and bool(hashes.agree(np.array([item]), np.array([kept_item]))[0]))
        duplicates.append(Duplicate(catalogue.paths[f], "near" if near else "similar", score))
    duplicates.sort(key=lambda d: (TIERS.index(d.tier), -d.score, d.path))
    return DuplicateGroup(catalogue.paths[kept], tuple(duplicates))


def choose_keep(catalogue: Catalogue, members: np.ndarray, rule: str) -> int:
    """The member to keep: largest (pixels, then bytes), oldest or newest (mtime), or shortest-path;
    ties go to the first path in sort order."""
    keys: dict[str, Callable[[int], tuple]] = {
        "largest": lambda f: (-catalogue.pixels[f], -catalogue.sizes[f], catalogue.paths[f]),
        "oldest": lambda f: (catalogue.mtimes[f], catalogue.paths[f]),
        "newest": lambda f: (-catalogue.mtimes[f], catalogue.paths[f]),
        "shortest-path": lambda f: (len(catalogue.paths[f]), catalogue.paths[f]),
    }
    return min((int(f) for f in members), key=keys[rule])


class _PathOfItem:
    """item -> the path of one file holding that content (for decoding it)."""

    def __init__(self, catalogue: Catalogue) -> None:
        self._paths = catalogue.paths
        self._first = catalogue.first_file_of_items()

    def __call__(self, item: int) -> str:
        return self._paths[self._first[item]]

