"""Exact cosine search over one committed state of an index: a float16 first pass on the memory map,
then an exact re-score of every row that could be in the top k.

The first pass multiplies the stored float16 rows by a float16 copy of the query directly (no float32
copy of the file), which reads half the bytes of a float32 matrix product. Its scores are off by at
most `first_pass_error()`; every row whose rough score is within twice that of the k-th best file's is
re-scored in float64 from the stored float16 values, so the ranking is the one exact scores give.
"""

from __future__ import annotations

import bisect
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

# The first pass multiplies slices of the map this big (views, not copies) and gathers scattered rows
# in copies of GATHER_BYTES. Few big products: on a loaded 2-core machine each product's thread
# hand-off costs the most, and 2 MiB slices ran ~10x slower than one product over the whole 1 GiB.
SEARCH_BUFFER_BYTES = 1 << 30
GATHER_BYTES = 8 << 20
# Scores of one group of queries are kept whole (float16, rows x queries), in at most this many bytes.
SCORE_BYTES = 64 << 20
# Above this share of the vector file, a folder restriction scans the whole file instead of gathering.
GATHER_SHARE = 0.25
# Stored rows are unit float32 vectors rounded to float16: each component is off by at most 2^-11 of
# itself (or 2^-25 when subnormal), so a row's norm is below 1 + 2^-11 + sqrt(D) * 2^-25 < 1 + 2^-10.
ROW_NORM_BOUND = 1 + 2.0 ** -10

# (rows,) -> (file rows, file paths): the files of the committed state that use those vector rows.
Lookup = Callable[[np.ndarray], tuple[np.ndarray, Sequence[str]]]


@dataclass(frozen=True)
class Hit:
    path: str
    score: float  # cosine similarity


@dataclass(frozen=True, eq=False)
class Snapshot:
    """Everything search needs from one committed state of the index."""

    data_version: int
    paths: list[str]  # sorted, so an entry's position is its tie-break rank and folders are ranges
    rows: np.ndarray  # (F,) int64, vector row of each entry
    by_row: np.ndarray  # (F,) entry positions sorted by row
    vectors: np.ndarray  # (R, D) float16, memory-mapped
    generation: int = 0  # of the vector file the rows point into (a compaction or rebuild renumbers them)

    @cached_property
    def sorted_rows(self) -> np.ndarray:
        return self.rows[self.by_row]

    @cached_property
    def distinct_rows(self) -> np.ndarray:
        return distinct_sorted(self.sorted_rows)


def search_snapshot(snapshot: Snapshot, queries: np.ndarray, k: int, threshold: float | None,
                    under: Sequence[str] | None) -> list[list[Hit]]:
    """For each unit query row of (Q, D), its k best files, best first; ties broken by path."""
    if under is None:
        entries, entry_rows = snapshot.by_row, snapshot.sorted_rows
    else:
        entries = _entries_under(snapshot, under)
        entry_rows = snapshot.rows[entries]
    if len(entries) == 0:
        return [[] for _ in range(len(queries))]
    scope = snapshot.distinct_rows if under is None else distinct_sorted(entry_rows)
    if len(scope) > GATHER_SHARE * len(snapshot.vectors):
        scope = None  # cheaper to read the whole file in order; rows outside have no files in scope

    def lookup(rows: np.ndarray) -> tuple[np.ndarray, list[str]]:
        found = entries[_ranges(np.searchsorted(entry_rows, rows, "left"), np.searchsorted(entry_rows, rows, "right"))]
        return snapshot.rows[found], [snapshot.paths[e] for e in found]

    return search_rows(snapshot.vectors, scope, lookup, queries, k, threshold)


def search_rows(vectors: np.ndarray, scope: np.ndarray | None, lookup: Lookup, queries: np.ndarray, k: int,
                threshold: float | None) -> list[list[Hit]]:
    """Exact top k files per query among the vector rows `scope` (sorted; None: every row of `vectors`)."""
    import torch  # lazily: only search needs it

    count = len(vectors) if scope is None else len(scope)
    if count == 0:
        return [[] for _ in range(len(queries))]
    group = max(1, SCORE_BYTES // (count * 2))
    results: list[list[Hit]] = []
    for start in range(0, len(queries), group):
        q = queries[start:start + group]
        scores = first_pass(vectors, scope, torch.from_numpy(q).half())  # (G, count) float16
        for i, query in enumerate(q):
            results.append(_exact_top_k(vectors, scope, lookup, scores[i], query, k, threshold))
    return results


def first_pass(vectors: np.ndarray, scope: np.ndarray | None, q16: torch.Tensor) -> torch.Tensor:
    """(Q, count) float16 rough scores of the rows in `scope` (or all rows)."""
    import torch

    count = len(vectors) if scope is None else len(scope)
    scores = torch.empty((len(q16), count), dtype=torch.float16)
    dim = vectors.shape[1]
    step = max(1, (SEARCH_BUFFER_BYTES if scope is None else GATHER_BYTES) // (dim * 2))
    with warnings.catch_warnings():
        # The map is read-only and torch only reads it; its "not writable" warning is noise.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for begin in range(0, count, step):
            end = min(begin + step, count)
            block = vectors[begin:end] if scope is None else _gather(vectors, scope[begin:end])
            if begin == 0 and end == count:
                torch.mm(q16, torch.from_numpy(np.asarray(block)).T, out=scores)
            else:
                scores[:, begin:end] = q16 @ torch.from_numpy(np.asarray(block)).T
    return scores


def first_pass_error(query: np.ndarray) -> float:
    """A bound on |rough - exact| for any stored row and this unit query: rounding the query to float16
    (Cauchy-Schwarz: |x . (q - q16)| <= |x| |q - q16|), float32 accumulation of D products (at most
    D u / (1 - D u) of sum |x_i q16_i| <= |x| |q16|, u = 2^-24), and rounding the result to float16
    (half an ulp, 2^-11 below 2). Doubled, in case a kernel rounds a partial sum to float16 once more."""
    q = query.astype(np.float64)
    q16 = query.astype(np.float16).astype(np.float64)
    unit = 2.0 ** -24 * len(q)
    accumulation = unit / (1 - unit) * ROW_NORM_BOUND * np.linalg.norm(q16)
    return 2 * (ROW_NORM_BOUND * np.linalg.norm(q - q16) + accumulation + 2.0 ** -11)


def exact_scores(vectors: np.ndarray, rows: np.ndarray, query: np.ndarray) -> np.ndarray:
    """(n,) float64 scores of the stored rows: float16 x float32 products are exact in float64, and the
    row-wise sum runs in the same order for every row, so equal vectors get equal scores (ties hold)."""
    stored = np.asarray(vectors[rows], dtype=np.float64)  # (n, D)
    return (stored * query.astype(np.float64)).sum(axis=1)


def _exact_top_k(vectors: np.ndarray, scope: np.ndarray | None, lookup: Lookup, rough: torch.Tensor,
                 query: np.ndarray, k: int, threshold: float | None) -> list[Hit]:
    """Why this is exact: with e the first-pass error bound and a the k-th best rough score among files,
    k files score at least a - e exactly, so every file of the true top k (ties included) has a rough
    score of at least a - 2e. Rows are looked up best rough score first until that bound is covered."""
    import torch

    margin = 2 * first_pass_error(query)
    count = len(rough)
    wanted = min(count, k + 16)
    while True:
        if wanted < count:
            # Every row scoring above the floor is looked up (some at the floor may not be). NaN (bytes
            # a writer is still appending, which no committed file uses) ranks first: it takes a place.
            top = torch.topk(rough, wanted)
            floor, looked = float(top.values[-1]), top.indices.numpy()
        else:
            floor, looked = -np.inf, np.arange(count)
        file_rows, paths = lookup(looked if scope is None else scope[looked])
        position = file_rows if scope is None else np.searchsorted(scope, file_rows)
        rough_of_file = rough[torch.from_numpy(position)].float().numpy()
        kth = -np.inf if len(file_rows) < k else np.partition(rough_of_file, len(file_rows) - k)[len(file_rows) - k]
        if wanted == count or kth - margin > floor:
            break
        wanted = min(count, wanted * 4)
    keep = np.flatnonzero(rough_of_file >= kth - margin)
    rows = file_rows[keep]
    order = np.argsort(rows)  # the map is read in row order
    scores = np.empty(len(rows))
    scores[order] = exact_scores(vectors, rows[order], query)
    ranked = sorted(zip(-scores, (paths[i] for i in keep)))[:k]
    return [Hit(path, float(-negative)) for negative, path in ranked if threshold is None or -negative >= threshold]


def folders(under: Sequence[str]) -> list[str]:
    # A bare string would iterate as one-character "folders", and "/" contains everything.
    if isinstance(under, (str, bytes, os.PathLike)):
        raise TypeError(f"under must be a sequence of folders, not one path: {under!r}")
    return list(under)


def prefix_range(folder: str) -> tuple[str, str, str]:
    """(folder, lo, hi): paths inside are lo <= p < hi. Comparing strings keeps LIKE's % and _ out,
    and the separator stops /a/b from matching /a/bc."""
    folder = os.path.abspath(folder)
    lo = folder if folder.endswith(os.sep) else folder + os.sep
    return folder, lo, lo[:-1] + chr(ord(lo[-1]) + 1)


def _entries_under(snapshot: Snapshot, under: Sequence[str]) -> np.ndarray:
    """Entry positions (sorted by row) whose path is one of `under` or inside one of those folders."""
    inside = inside_mask(snapshot, under)
    return snapshot.by_row[inside[snapshot.by_row]]


def inside_mask(snapshot: Snapshot, under: Sequence[str]) -> np.ndarray:
    """(F,) bool: the entry's path is one of `under` or inside one of those folders."""
    inside = np.zeros(len(snapshot.paths), dtype=bool)
    for folder in folders(under):
        exact, lo, hi = prefix_range(folder)
        start = bisect.bisect_left(snapshot.paths, exact)
        if start < len(snapshot.paths) and snapshot.paths[start] == exact:
            inside[start] = True
        inside[bisect.bisect_left(snapshot.paths, lo):bisect.bisect_left(snapshot.paths, hi)] = True
    return inside


def distinct_sorted(ascending: np.ndarray) -> np.ndarray:
    """The distinct values of a sorted array (np.unique hashes, and took ~1 s on 1M rows)."""
    return ascending[np.concatenate(([True], ascending[1:] != ascending[:-1]))]


def _ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The positions lo[0]..hi[0]-1, lo[1]..hi[1]-1, ... as one array."""
    counts = hi - lo
    starts = np.repeat(lo - (np.cumsum(counts) - counts), counts)
    return starts + np.arange(counts.sum())


def _gather(vectors: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(n, D) float16 for sorted rows; a consecutive run is sliced from the map without a gather."""
    if rows[-1] - rows[0] + 1 == len(rows):
        return vectors[rows[0]:rows[-1] + 1]
    return vectors[rows]
