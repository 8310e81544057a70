"""Approximate search over one committed state of an index: ANN candidates, mapped through the SQLite
snapshot (a row no file refers to any more is dropped) and re-ranked exactly from the float16 vectors.

Used when the index holds at least `ann_min_files()` files (below that, exact search is faster) and
not asked for exact results; a folder restriction holding fewer files than that is searched exactly.
A search of every file measures the index by its used vector rows instead, and maps candidates to
files without a snapshot (direct.py); this module serves folder restrictions, dedup, and indexes
without the row index.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from vitkit.retrieval import ann
from vitkit.retrieval.exact import Hit, Snapshot, inside_mask

ANN_MIN_FILES_ENV = "VITKIT_ANN_MIN_FILES"
# Measured with benchmarks/search.py on 2 cores: at 100,000 files exact search costs ~20 ms at numpy's
# speed and the ANN ~2.5 ms at recall@10 0.97; below it, 4-bit codes need most of the index scanned to
# keep that recall (0.74 at 20,000 with the settings below), so exact search is the better answer.
ANN_MIN_FILES = 100_000
# Share of the inverted lists each query scans, and how many candidates it re-ranks exactly: chosen for
# recall@10 >= 0.97 against exact search on the benchmark's clustered data with queries from a shifted
# distribution (see README). Both matter there: the nearest images to a text-like query are the outliers
# of their clusters, spread over many lists, and 4-bit codes rank them roughly.
PROBE_SHARE = 0.12
POOL = 500
# ...but at least this many codes: a smaller index has fewer images per cluster, so its nearest images
# are spread wider (at 100,000: recall 0.952 scanning 12%, 0.973 scanning half).
MIN_SCANNED = 50_000
# A reader syncs its ANN copy in memory (and saves it, if no writer holds the lock) once this share of
# the live rows is missing from it or dead in it; fewer are scored exactly or dropped at each query.
SYNC_FRACTION = 0.05
SYNC_MIN_ROWS = 1_000


def ann_min_files() -> int:
    """Files from which search is approximate; VITKIT_ANN_MIN_FILES overrides (0: always, for tests)."""
    value = os.environ.get(ANN_MIN_FILES_ENV, "")
    return int(value) if value.strip().isdigit() else ANN_MIN_FILES


@dataclass(frozen=True, eq=False)
class AnnView:
    """An ANN index seen through one snapshot: which rows are live and which live rows it lacks."""

    snapshot: Snapshot
    index: ann.AnnIndex
    live_mask: np.ndarray  # (R,) bool: rows some file refers to
    unindexed: np.ndarray  # live rows the ANN index lacks (scored exactly at each query)
    rows_by_entry_row: np.ndarray  # (F,) snapshot.rows[snapshot.by_row], sorted: candidate rows -> entries


def view(folder, snapshot: Snapshot, model_key: str, generation: int, warn: Callable[[str], None],
         previous: AnnView | None, persist: Callable[[ann.AnnIndex], None]) -> AnnView:
    """The ANN index for this snapshot: the previous one (or the saved one) if close enough, synced in
    memory otherwise, rebuilt if unusable; a changed one is handed to `persist`."""
    if previous is not None and previous.snapshot is snapshot:
        return previous
    live_mask = np.zeros(len(snapshot.vectors), dtype=bool)
    live_mask[snapshot.rows] = True  # masks, not set operations: linear in the rows, not n log n
    live = np.flatnonzero(live_mask)
    current = previous.index if previous is not None and previous.index.header.generation == generation else None
    if current is None or _far_from(current.rows, live_mask, len(live)):
        # The saved file may be newer than our copy (a writer synced it since); if it is unusable,
        # ensure() below says why and rebuilds.
        current = ann.load(folder, model_key, snapshot.vectors.shape[1], generation)[0] or current
    if current is None or current.needs_retraining(len(live)) or _far_from(current.rows, live_mask, len(live)):
        current, changed = ann.ensure(folder, snapshot.vectors, live, model_key, generation, warn, current)
        if changed:
            persist(current)
    indexed = np.zeros(len(snapshot.vectors), dtype=bool)
    indexed[current.rows[current.rows < len(indexed)]] = True
    unindexed = live[~indexed[live]]
    return AnnView(snapshot, current, live_mask, unindexed, snapshot.rows[snapshot.by_row])


def search(snapshot: Snapshot, view_: AnnView, queries: np.ndarray, k: int, threshold: float | None,
           under: Sequence[str] | None) -> list[list[Hit]] | None:
    """For each unit query row of (Q, D), its k best files (ties broken by path), or None where exact
    search should answer instead (a small folder restriction, or too few candidates to fill k)."""
    inside = None if under is None else inside_mask(snapshot, under)
    allowed = len(snapshot.paths) if inside is None else int(inside.sum())
    if allowed < ann_min_files() or allowed == 0:
        return None
    share = allowed / len(snapshot.paths)
    # A folder's files are a fraction of each list: scan more lists to meet as many of them.
    nlist = view_.index.header.nlist
    wanted = max(PROBE_SHARE, MIN_SCANNED / max(len(view_.index.rows), 1))
    probes = math.ceil(nlist * min(1.0, wanted / share))
    row_filter, extra = None, view_.unindexed
    if inside is not None:
        rows_inside = np.zeros(len(snapshot.vectors), dtype=bool)
        rows_inside[snapshot.rows[inside]] = True
        row_filter = ann.row_filter(rows_inside)
        extra = extra[rows_inside[extra]]
    results = []
    for query in queries:
        found = view_.index.search(query[None], max(POOL, 4 * k), probes, row_filter)
        found = found[found < len(view_.live_mask)]
        rows = np.unique(np.concatenate([found[view_.live_mask[found]], extra]))
        hits = _rank(snapshot, view_, rows, query, k, threshold, inside)
        if hits is None:
            return None
        results.append(hits)
    return results


def _rank(snapshot: Snapshot, view_: AnnView, rows: np.ndarray, query: np.ndarray, k: int,
          threshold: float | None, inside: np.ndarray | None) -> list[Hit] | None:
    # Exact, from the stored vectors; einsum, not BLAS: a thousand rows are too few to pay for its threads,
    # which measured 12 ms a query on a busy machine.
    scores = np.einsum("ij,j->i", np.asarray(snapshot.vectors[rows], dtype=np.float32), query)
    first = np.searchsorted(view_.rows_by_entry_row, rows, "left")
    counts = np.searchsorted(view_.rows_by_entry_row, rows, "right") - first
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    entries = snapshot.by_row[np.repeat(first, counts) + offsets]  # every file sharing each candidate row
    entry_scores = np.repeat(scores, counts)
    if inside is not None:
        keep = inside[entries]
        entries, entry_scores = entries[keep], entry_scores[keep]
    if len(entries) < k:
        return None  # the scan found too few: exact search finds them all
    order = np.lexsort((entries, -entry_scores))[:k]  # entries are in path order: ties break by path
    return [Hit(snapshot.paths[e], float(s)) for s, e in zip(entry_scores[order], entries[order])
            if threshold is None or s >= threshold]


def _far_from(rows: np.ndarray, live_mask: np.ndarray, live_count: int) -> bool:
    """Whether enough rows differ that syncing beats scoring the missing ones at every query."""
    inside = rows < len(live_mask)
    both = int(live_mask[rows[inside]].sum())
    differing = len(rows) + live_count - 2 * both
    return differing > max(SYNC_MIN_ROWS, SYNC_FRACTION * live_count)
