"""What search keeps after ranking: one hit per duplicate group, and a relevance floor."""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vitkit.errors import UsageError
from vitkit.retrieval.exact import Hit
from vitkit.retrieval.grouping import link_items
from vitkit.retrieval.neighbours import ExactNeighbours
from vitkit.retrieval.phash import PerceptualHashes
from vitkit.retrieval.store import IndexReader


@dataclass(frozen=True)
class Collapsed:
    hits: list[Hit]  # the best-ranked hit of each duplicate group, best first
    duplicates: dict[str, tuple[str, ...]]  # a kept hit's path -> the lower-ranked hits of its group


def check_floor(min_score: float | None, relative: float | None) -> None:
    if min_score is not None and not math.isfinite(min_score):
        raise UsageError(f"--min-score must be a finite number, not {min_score}")
    if relative is not None and not (math.isfinite(relative) and relative >= 0):
        raise UsageError(f"--relative must be a number of at least 0, not {relative}",
                         hint="--relative 0.05 keeps hits scoring within 0.05 of the best")


def apply_floor(hits: Sequence[Hit], min_score: float | None, relative: float | None) -> list[Hit]:
    """The ranked `hits` scoring at least `min_score` and within `relative` of the best one."""
    floor = -math.inf if min_score is None else min_score
    if relative is not None and hits:
        floor = max(floor, hits[0].score - relative)
    return [hit for hit in hits if hit.score >= floor]


def collapse_duplicates(index: IndexReader, hits: Sequence[Hit], threshold: float, near_floor: float) -> Collapsed:
    """Group the ranked `hits` as dedup would (exact, near, or similar at `threshold`), among themselves
    only, and keep each group's best-ranked hit."""
    if not hits:
        return Collapsed([], {})
    snapshot = index.snapshot()
    # A hit's path is in the snapshot the search used, unless a writer committed in between: a hit
    # that is gone since stays as its own group.
    positions = [bisect.bisect_left(snapshot.paths, hit.path) for hit in hits]
    found = [p < len(snapshot.paths) and snapshot.paths[p] == hit.path for p, hit in zip(positions, hits)]
    rows = np.array([snapshot.rows[p] if ok else -1 - i for i, (p, ok) in enumerate(zip(positions, found))])
    item_rows, items = np.unique(rows, return_inverse=True)
    first_hit = {int(item): hits[i].path for i, item in reversed(list(enumerate(items)))}
    hashes = PerceptualHashes(first_hit.__getitem__)
    known = np.flatnonzero(item_rows >= 0)  # items whose vector the snapshot has
    labels = np.arange(len(item_rows))  # every item its own group, until linked
    if len(known) > 1:
        search = ExactNeighbours(snapshot.vectors, item_rows[known])
        links = link_items(search, threshold, near_floor, lambda a, b: hashes.agree(known[a], known[b]),
                           k=len(known) - 1)
        labels[known] = links.linked + len(item_rows)  # offset: never equal to an unlinked item's label
    kept: dict[int, int] = {}
    duplicates: dict[int, list[str]] = {}
    for i, item in enumerate(items):
        group = int(labels[item])
        if group in kept:
            duplicates[kept[group]].append(hits[i].path)
        else:
            kept[group] = i
            duplicates[i] = []
    return Collapsed([hits[i] for i in kept.values()], {hits[i].path: tuple(d) for i, d in duplicates.items()})
