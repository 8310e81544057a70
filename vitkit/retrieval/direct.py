"""Search without a snapshot: the few files a search needs are looked up by vector row (schema.ROW_INDEX)
inside the search's own read transaction, instead of loading every path of the index first (~0.5 s at
1M files). So the first search after opening costs what the search itself costs, and every path
returned is one that the committed state holds.

The approximate search needs no list of live rows either. Within a generation a row no file refers to
stays dead (the writer gives content that comes back a new row), so the live rows the ANN index lacks
are those from its `covers` on, one range of the row index; rows it holds that died since are dropped
when no file answers their lookup.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vitkit.retrieval import ann, approximate
from vitkit.retrieval.exact import GATHER_SHARE, Hit, Lookup, distinct_sorted, folders, prefix_range, search_rows

# Rows looked up first, best exact score first; more (4x each round) while ties or dead rows leave the
# k-th file undecided.
_FIRST_LOOKUP = 16


@dataclass(frozen=True, eq=False)
class RowsView:
    """The ANN index as one committed state sees it, without its paths."""

    data_version: int
    generation: int
    index: ann.AnnIndex
    appended: np.ndarray  # live rows from index.covers on: not in the ANN index, scored exactly per query
    signature: tuple[int, ...] | None  # of the ANN file it was loaded from (a newer save is reloaded)


def used_rows(conn: sqlite3.Connection) -> int:
    """One past the highest row a file refers to: the size approximate search is chosen by (exact search
    reads the vector file up to there; one lookup in the row index, where counting files scans it)."""
    highest = conn.execute("SELECT max(row) FROM files").fetchone()[0]
    return 0 if highest is None else int(highest) + 1


def live_rows_from(conn: sqlite3.Connection, first: int) -> np.ndarray:
    joined = conn.execute("SELECT group_concat(row) FROM (SELECT DISTINCT row FROM files WHERE row >= ? ORDER BY row)",
                          (first,)).fetchone()[0]
    return np.fromstring(joined, dtype=np.int64, sep=",") if joined else np.zeros(0, dtype=np.int64)


def search_exact(conn: sqlite3.Connection, vectors: np.ndarray, queries: np.ndarray, k: int,
                 threshold: float | None, under: Sequence[str] | None) -> list[list[Hit]]:
    """Exact search of the vector rows of files in `under` (or every row), in the caller's transaction."""
    inside, bounds = _path_filter(under)
    scope = None
    if under is not None:
        scope = _rows_under(conn, inside, bounds)
        if len(scope) == 0:
            return [[] for _ in range(len(queries))]
        if len(scope) > GATHER_SHARE * len(vectors):
            scope = None  # cheaper to read the whole file in order; lookups keep to the folders
    return search_rows(vectors, scope, _lookup(conn, inside, bounds), queries, k, threshold)


def search_ann(conn: sqlite3.Connection, vectors: np.ndarray, view: RowsView, queries: np.ndarray, k: int,
               threshold: float | None) -> list[list[Hit]] | None:
    """For each unit query, its k best files from the ANN's candidates and the appended rows, re-ranked
    exactly; None when the candidates hold fewer than k live files (exact search finds them all)."""
    wanted = max(approximate.PROBE_SHARE, approximate.MIN_SCANNED / max(view.index.index.ntotal, 1))
    probes = math.ceil(view.index.header.nlist * min(1.0, wanted))
    appended = view.appended[view.appended < len(vectors)]
    lookup = _lookup(conn, [], [])
    results = []
    for query in queries:
        found = view.index.search(query[None], max(approximate.POOL, 4 * k), probes)
        # Not np.unique: its first call in a process costs ~30 ms (it loads its hash table code).
        rows = distinct_sorted(np.sort(np.concatenate([found[found < len(vectors)], appended])))
        hits = _best_files(vectors, rows, query, k, threshold, lookup)
        if hits is None:
            return None
        results.append(hits)
    return results


def _best_files(vectors: np.ndarray, rows: np.ndarray, query: np.ndarray, k: int, threshold: float | None,
                lookup: Lookup) -> list[Hit] | None:
    """The k best files among those using `rows` (ties broken by path), looking up rows best score first
    until no row left could change the k-th place. einsum, not BLAS: for a thousand rows BLAS's thread
    hand-off costs more than the products."""
    scores = np.einsum("ij,j->i", np.asarray(vectors[rows], dtype=np.float32), query)
    order = np.argsort(-scores, kind="stable")
    found: list[tuple[float, str]] = []
    looked, step = 0, k + _FIRST_LOOKUP
    while looked < len(order):
        batch = order[looked:looked + step]
        looked, step = looked + len(batch), step * 4
        score_of = dict(zip(rows[batch].tolist(), scores[batch].tolist()))
        file_rows, paths = lookup(np.sort(rows[batch]))
        found += [(score_of[row], path) for row, path in zip(file_rows.tolist(), paths)]
        if len(found) >= k and looked < len(order):
            kth = sorted((score for score, _ in found), reverse=True)[k - 1]
            if scores[order[looked]] < kth:
                break
    if len(found) < k:
        return None
    ranked = sorted(found, key=lambda hit: (-hit[0], hit[1]))[:k]
    return [Hit(path, score) for score, path in ranked if threshold is None or score >= threshold]


def _lookup(conn: sqlite3.Connection, inside: list[str], bounds: list[tuple[str, ...]]) -> Lookup:
    """rows -> (row, path) of the files using them (inside the folders, if any), through the row index."""
    either = " OR ".join(f"({clause})" for clause in inside) or "1"
    query = f"SELECT path, row FROM files WHERE row IN (SELECT value FROM json_each(?)) AND ({either})"
    values = tuple(value for clause in bounds for value in clause)

    def lookup(rows: np.ndarray) -> tuple[np.ndarray, list[str]]:
        found = conn.execute(query, (json.dumps(rows.tolist()), *values)).fetchall()
        return np.array([row for _, row in found], dtype=np.int64), [path for path, _ in found]

    return lookup


def _path_filter(under: Sequence[str] | None) -> tuple[list[str], list[tuple[str, ...]]]:
    """SQL conditions (and their values) for files that are one of `under` or inside one of them."""
    if under is None:
        return [], []
    inside: list[str] = []
    bounds: list[tuple[str, ...]] = []
    for folder in folders(under):
        exact, lo, hi = prefix_range(folder)
        inside += ["path = ?", "path >= ? AND path < ?"]
        bounds += [(exact,), (lo, hi)]
    return inside, bounds


def _rows_under(conn: sqlite3.Connection, inside: list[str], bounds: list[tuple[str, ...]]) -> np.ndarray:
    """The distinct vector rows of the files matching any condition, sorted. Each condition is its own
    query so that it uses the path index: the cost follows the folders' size, not the index's."""
    found = [np.zeros(0, dtype=np.int64)]
    for clause, values in zip(inside, bounds):
        joined = conn.execute(f"SELECT group_concat(row) FROM files WHERE {clause}", values).fetchone()[0]
        if joined:
            found.append(np.fromstring(joined, dtype=np.int64, sep=","))
    return distinct_sorted(np.sort(np.concatenate(found)))
