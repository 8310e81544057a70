"""Approximate neighbours for grouping (dedup): one k-NN query per item against the faiss index, re-ranked exactly.

Each item's own float16 vector is the query (batched). faiss returns a small pool of candidate rows; rows
that are not items in scope (or the item itself) are dropped, the rest are scored exactly from the stored
vectors (tiers compare exact cosines with thresholds), and the item keeps its k best above the floor.
Duplicates sit very close (cosine >= 0.90, where an image's other neighbours are far lower), so a few
inverted lists and a few candidates find them, unlike a text query whose best images are the outliers of
their clusters. Memory is one batch of queries and candidates: O(n) in all, never n x n.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from vitkit.retrieval import ann
from vitkit.retrieval.neighbours import Pairs

# Lists scanned per item and candidates re-ranked, measured with benchmarks/dedup.py (README, "Duplicates"):
# of the planted duplicates (cosine 0.978-0.999) 1 list found 0.965 and 2 lists 0.998 at 100,000; 8 found
# all of them at 100,000, 300,000 and 1,000,000, at little cost (the scan is a small part of the time).
PROBES = 8
POOL = 32
QUERY_BATCH = 1024  # items queried at once: 1024 x 32 candidates x 512 float32 = 64 MiB re-ranked


class AnnNeighbours:
    """Neighbours of `rows` (sorted distinct vector rows; an item is a position in them) of a (R, D)
    float16 vector file (unit rows), from `index`, which must hold every one of those rows."""

    def __init__(self, vectors: np.ndarray, rows: np.ndarray, index: ann.AnnIndex, probes: int = PROBES,
                 pool: int = POOL) -> None:
        self.vectors = vectors
        self.rows = np.asarray(rows, dtype=np.int64)
        self.index = index
        self.probes = probes
        self.pool = pool

    def __len__(self) -> int:
        return len(self.rows)

    def pairs(self, threshold: float, k: int) -> Iterator[Pairs]:
        n = len(self.rows)
        if n < 2 or k < 1:
            return
        k = min(k, n - 1)
        pool = max(self.pool, k + 1)  # the item itself comes back too
        row_filter = None
        if len(self.rows) < len(self.index.rows):
            # A folder restriction: scan only rows in scope, so the whole pool comes from inside it.
            in_scope = np.zeros(int(self.index.rows[-1]) + 1, dtype=bool)
            in_scope[self.rows[self.rows < len(in_scope)]] = True
            row_filter = ann.row_filter(in_scope)
        for start in range(0, n, QUERY_BATCH):
            stop = min(start + QUERY_BATCH, n)
            queries = self._load(self.rows[start:stop])
            found = self.index.search_batch(queries, pool, self.probes, row_filter)
            yield from self._rerank(start, queries, found, threshold, k)

    def _rerank(self, start: int, queries: np.ndarray, found: np.ndarray, threshold: float, k: int) -> Iterator[Pairs]:
        """Exact scores of the candidate rows that are items other than the query; its k best above `threshold`."""
        items = np.searchsorted(self.rows, found).clip(max=len(self.rows) - 1)
        own = np.arange(start, start + len(found))[:, None]
        valid = (found >= 0) & (self.rows[items] == found) & (items != own)
        readable = np.where(valid, found, self.rows[0])  # invalid slots read any row and are masked after
        candidates = self._load(readable.ravel()).reshape(*found.shape, -1)  # (B, pool, D)
        scores = np.einsum("bpd,bd->bp", candidates, queries)
        scores = np.where(valid, np.minimum(scores, 1.0), -np.inf)  # float16 rounding may pass 1 for a near copy
        best = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # (B, k)
        best_scores = np.take_along_axis(scores, best, axis=1)
        keep = best_scores >= threshold
        left = np.nonzero(keep)[0] + start
        if len(left):
            right = np.take_along_axis(items, best, axis=1)[keep]
            yield Pairs(left.astype(np.int64), right.astype(np.int64), best_scores[keep])

    def _load(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), D) float32: a contiguous slice of the mapped file when the rows are consecutive."""
        if len(rows) and rows[-1] - rows[0] + 1 == len(rows) and np.all(np.diff(rows) == 1):
            return np.asarray(self.vectors[rows[0]:rows[-1] + 1], dtype=np.float32)
        return np.asarray(self.vectors[np.asarray(rows)], dtype=np.float32)
