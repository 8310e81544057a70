"""Neighbour queries for grouping (dedup): for every vector, its most similar others above a cosine floor.

Grouping needs one thing from a vector search, behind `NeighbourSearch`: for each of n items (positions
0..n-1 of the vectors it was built on), up to k other items with cosine >= a threshold (its k best when
more qualify), delivered in blocks so nothing of size n x n ever exists. `ExactNeighbours` answers it with
blocked matrix products over the float16 rows (exact; O(n^2 D) time, fine up to ~10^5 items). The
approximate index (ann_neighbours.AnnNeighbours) answers it with one k-NN query per item (its own vector as
the query, the item itself dropped) and a score filter. Scores must be exact cosines of the stored rows
(re-rank ANN candidates), as tiers compare them with thresholds; missing a neighbour only risks a
missed link, never a wrong one.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

# Scores of one block of queries against one block of candidates: 2048 x 8192 float32 = 64 MiB.
QUERY_BLOCK = 2048
CANDIDATE_BLOCK = 8192
PAIR_BLOCK = 65536  # items per yielded block of pairs


@dataclass(frozen=True)
class Pairs:
    """Parallel (P,) arrays: item `left` has item `right` among its neighbours at cosine `score`.
    Items are positions; a pair may come in both orders, never as (i, i)."""

    left: np.ndarray  # int64
    right: np.ndarray  # int64
    score: np.ndarray  # float32


class NeighbourSearch(Protocol):
    def __len__(self) -> int: ...

    def pairs(self, threshold: float, k: int) -> Iterator[Pairs]:
        """For every item, up to k other items with cosine >= threshold (its k best), in blocks."""
        ...


class ExactNeighbours:
    """Exact neighbours of `rows` of a (R, D) float16 vector file (unit rows), in bounded memory: a
    running top-k per item ((n, k) scores and items) and one block of scores at a time."""

    def __init__(self, vectors: np.ndarray, rows: np.ndarray, query_limit: int | None = None) -> None:
        self.vectors = vectors
        self.rows = np.asarray(rows, dtype=np.int64)
        # Benchmarks only: score just the first query_limit items' blocks (memory peaks in the first block,
        # when the whole top-k exists and every candidate block has been read); pairs are then incomplete.
        self.query_limit = query_limit

    def __len__(self) -> int:
        return len(self.rows)

    def pairs(self, threshold: float, k: int) -> Iterator[Pairs]:
        import torch

        n = len(self.rows)
        if n < 2 or k < 1:
            return
        k = min(k, n - 1)
        best = torch.full((n, k), -torch.inf)  # (n, k) running best scores, best first
        items = torch.full((n, k), -1, dtype=torch.int64)  # (n, k) their positions
        # Each unordered pair is scored once: query block [a, a + B) against candidates [a, n). A score
        # feeds the query's top-k and, for candidates past the query block, the candidate's too.
        for a in range(0, n if self.query_limit is None else min(n, self.query_limit), QUERY_BLOCK):
            b = min(a + QUERY_BLOCK, n)
            queries = self._load(a, b)  # (B, D)
            for c in range(a, n, CANDIDATE_BLOCK):
                d = min(c + CANDIDATE_BLOCK, n)
                scores = queries @ self._load(c, d).T  # (B, C)
                if c == a:
                    scores[torch.arange(b - a), torch.arange(b - a)] = -torch.inf  # an item is not its own neighbour
                _merge(best, items, a, scores, c, k)
                outside = max(b, c)  # candidates inside the query block were merged as queries already
                if outside < d:
                    _merge(best, items, outside, scores[:, outside - c:].T, a, k)
        yield from _emit(best, items, threshold)

    def _load(self, start: int, stop: int):  # -> torch.Tensor (stop - start, D) float32
        import torch

        rows = self.rows[start:stop]
        block = self.vectors[rows[0]:rows[-1] + 1] if rows[-1] - rows[0] + 1 == len(rows) else self.vectors[rows]
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.from_numpy(np.asarray(block)).float()


def _merge(best, items, start: int, scores, offset: int, k: int) -> None:
    """Fold (M, C) `scores` of items start..start+M against items offset..offset+C into their top-k."""
    import torch

    top = torch.topk(scores, min(k, scores.shape[1]), dim=1)
    stop = start + scores.shape[0]
    merged_scores = torch.cat([best[start:stop], top.values], dim=1)
    merged_items = torch.cat([items[start:stop], top.indices + offset], dim=1)
    keep = torch.topk(merged_scores, k, dim=1)
    best[start:stop] = keep.values
    items[start:stop] = torch.gather(merged_items, 1, keep.indices)


def _emit(best, items, threshold: float) -> Iterator[Pairs]:
    import torch

    for start in range(0, len(best), PAIR_BLOCK):
        scores, found = best[start:start + PAIR_BLOCK], items[start:start + PAIR_BLOCK]
        mask = (scores >= threshold) & (found >= 0)
        left = torch.nonzero(mask, as_tuple=True)[0] + start
        if len(left):
            yield Pairs(left.numpy(), found[mask].numpy(), scores[mask].numpy())
