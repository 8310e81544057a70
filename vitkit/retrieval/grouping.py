"""Linking items into duplicate groups from neighbour pairs, in O(n + links) memory (never n x n).

Items are distinct contents (vector rows); files sharing content are one item, which is the `exact` tier.
A neighbour pair is a `near` link when the perceptual hashes agree and the cosine reaches the near floor,
and a `similar` link when the cosine reaches the threshold. Groups are the connected components over
all links; a second labelling over `near` links alone says which members are near each other through a
chain of near links (the strongest chain: a minimum spanning forest would give the same answer).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from vitkit.retrieval.neighbours import NeighbourSearch

# Each item's neighbours are its k best above the floor: bounds memory at n * k links however dense a
# burst of shots is. A group larger than k + 1 still forms, through chains of links.
NEIGHBOURS_PER_ITEM = 16
# (left, right) item arrays -> bool array: do the perceptual hashes of each pair agree?
NearTest = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Links:
    """Component labels per item (n,): `near` over near links only, `linked` over near and similar links."""

    near: np.ndarray
    linked: np.ndarray
    near_links: int
    similar_links: int


def link_items(search: NeighbourSearch, threshold: float, near_floor: float, near: NearTest | None,
               k: int = NEIGHBOURS_PER_ITEM) -> Links:
    """Component labels from `search`'s neighbour pairs: pairs at or above min(threshold, near_floor)
    are tested once each, a block at a time."""
    n = len(search)
    floor = min(threshold, near_floor) if near is not None else threshold
    near_parts: list[tuple[np.ndarray, np.ndarray]] = []
    similar_parts: list[tuple[np.ndarray, np.ndarray]] = []
    for block in search.pairs(floor, k):
        left, right, score = block.left, block.right, block.score
        is_near = np.zeros(len(left), dtype=bool)
        candidates = np.flatnonzero(score >= near_floor) if near is not None else np.empty(0, dtype=np.int64)
        if len(candidates):
            is_near[candidates] = near(left[candidates], right[candidates])
        similar = ~is_near & (score >= threshold)
        near_parts.append((left[is_near].astype(np.int32), right[is_near].astype(np.int32)))
        similar_parts.append((left[similar].astype(np.int32), right[similar].astype(np.int32)))
    near_left, near_right = _concat(near_parts)
    similar_left, similar_right = _concat(similar_parts)
    return Links(near=_components(n, near_left, near_right),
                 linked=_components(n, np.concatenate([near_left, similar_left]),
                                 np.concatenate([near_right, similar_right])),
                 near_links=len(near_left), similar_links=len(similar_left))


def _concat(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    if not parts:
        return np.empty(0, dtype=np.int32), np.empty(0, dtype=np.int32)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _components(n: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """(n,) component label of each item (an item alone is its own component)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if n == 0:
        return np.empty(0, dtype=np.int32)
    graph = coo_matrix((np.ones(len(left), dtype=np.int8), (left, right)), shape=(n, n)).tocsr()
    return connected_components(graph, directed=True, connection="weak")[1]
