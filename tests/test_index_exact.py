"""Exact search stays exact: the float16 first pass keeps within its error bound, and near-ties, exact
ties, dead rows and unreadable rows never change the top k, on every path search can take (the first
search of a state, which looks files up in SQLite; later searches; folder restrictions)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vitkit.retrieval import exact
from vitkit.retrieval.index import Entry, FileState, VectorIndex

DIM = 512  # the error bound grows with the dimension: test it at a real one
MODEL = "test-exact"


def unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def near_ties(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(query, (N, D) vectors) built to fool a float16 pass: 500 vectors whose exact scores all lie within
    ~1e-4 of a midpoint between two float16 numbers, so which one a rough score rounds to is decided by
    errors (the query's float16 rounding) as big as the gaps between exact scores; then 8 exact copies
    of one of them and 300 unrelated vectors."""
    rng = np.random.default_rng(seed)
    query = unit(rng.standard_normal(DIM))
    midpoint = (round(0.7 * 2048) + 0.5) / 2048  # float16 steps by 2^-11 in [0.5, 1)
    # Away from the query along its own float16 rounding error: there the rough scores err the most.
    error = query.astype(np.float16).astype(np.float32) - query
    away = np.outer(rng.choice([-1.0, 1.0], 500), unit(error)) + 0.3 * unit(rng.standard_normal((500, DIM)))
    away = unit(away - np.outer(away @ query, query))  # orthogonal to the query
    close = unit(midpoint * query + np.sqrt(1 - midpoint ** 2) * away)
    copies = np.repeat(close[7:8], 8, axis=0)
    return query, np.concatenate([close, copies, unit(rng.standard_normal((300, DIM)))])


def inversions(query: np.ndarray, vectors: np.ndarray, k: int) -> int:
    """How many of the true top k rank below k by the rough scores: what the exact re-score must repair."""
    stored = vectors.astype(np.float16)
    rough = exact.first_pass(stored, None, torch.from_numpy(query[None]).half())[0].float().numpy()
    truth = exact.exact_scores(stored, np.arange(len(stored)), query)
    kth_rough = np.sort(rough)[-k]
    return int(np.sum(rough[np.argsort(-truth)[:k]] < kth_rough))


def build(folder: Path, vectors: np.ndarray, names: list[str]) -> None:
    # Made-up file states, as in benchmarks/search.py: what is tested is ranking, not hashing files.
    with VectorIndex.open_for_writing(folder, MODEL, DIM) as index:
        index.add([Entry(FileState(name, 1, 1), f"hash-{i}", v) for i, (name, v) in enumerate(zip(names, vectors))])


def reference(names: list[str], vectors: np.ndarray, query: np.ndarray, k: int) -> list[tuple[str, float]]:
    """float64 scores of the stored float16 vectors against the float32 unit query; ties by path."""
    scores = vectors.astype(np.float16).astype(np.float64) @ unit(query).astype(np.float64)
    return sorted(zip((-s for s in scores), names))[:k]


def as_pairs(hits: list[exact.Hit]) -> list[tuple[float, str]]:
    return [(-h.score, h.path) for h in hits]


def assert_exact(hits: list[exact.Hit], expected: list[tuple[float, str]]) -> None:
    assert [h.path for h in hits] == [path for _, path in expected]
    np.testing.assert_allclose([h.score for h in hits], [-s for s, _ in expected], rtol=0, atol=1e-12)


def test_first_pass_stays_within_its_error_bound() -> None:
    """The bound assumes float32 accumulation; a kernel summing in float16 would break it at once."""
    rng = np.random.default_rng(1)
    rows = unit(rng.standard_normal((4000, DIM)) * rng.choice([1e-4, 1.0, 30.0], (4000, DIM)))  # spread magnitudes
    spiky = unit(np.where(np.arange(DIM) == 0, 1.0, 2.0 ** -6) * np.ones((1, DIM)))  # one large term, many tiny
    stored = np.concatenate([rows, spiky, unit(rows[:50] + rows[50:100])]).astype(np.float16)
    queries = unit(np.concatenate([rng.standard_normal((6, DIM)), spiky, rows[:3]]))
    rough = exact.first_pass(stored, None, torch.from_numpy(queries).half()).float().numpy()  # (Q, N)
    for query, approx in zip(queries, rough):
        truth = exact.exact_scores(stored, np.arange(len(stored)), query)
        assert np.abs(approx - truth).max() <= exact.first_pass_error(query) / 2  # undoubled bound


def test_near_ties_and_copies_rank_exactly_on_every_search_path(tmp_path: Path) -> None:
    query, vectors = near_ties()
    names = [f"/photos/{'ab'[i % 2]}/img{i:04d}.jpg" for i in range(len(vectors))]
    names[300:308] = [f"/photos/b/copy{7 - i}.jpg" for i in range(8)]  # copies: ties broken by path, not row
    build(tmp_path / "idx", vectors, names)
    k = 25
    assert inversions(query, vectors, k) > 0  # else this test could not catch a first pass trusted as is
    expected = reference(names, vectors, query, k)
    with VectorIndex.open_for_reading(tmp_path / "idx", MODEL) as index:
        assert_exact(index.search(query[None], k=k)[0], expected)  # first search: files looked up in SQLite
        assert_exact(index.search(query[None], k=k)[0], expected)  # the loaded snapshot
        assert_exact(index.search(np.stack([query, -query]), k=k)[0], expected)
    inside = [i for i, name in enumerate(names) if name.startswith("/photos/b/")]
    expected_b = reference([names[i] for i in inside], vectors[inside], query, k)
    for share in (exact.GATHER_SHARE, 0.0):  # gather the folder's rows, or scan the whole file
        with VectorIndex.open_for_reading(tmp_path / "idx", MODEL) as index:
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(exact, "GATHER_SHARE", share)
                for _ in range(2):  # first from SQLite lookups, then from the loaded snapshot
                    assert_exact(index.search(query[None], k=k, under=["/photos/b"])[0], expected_b)
                assert index.search(query[None], k=k, under=["/photos/c"]) == [[]]


def test_dead_and_unreadable_rows_at_the_top_are_never_returned(tmp_path: Path) -> None:
    query, vectors = near_ties(seed=2)
    names = [f"/photos/img{i:04d}.jpg" for i in range(len(vectors))]
    build(tmp_path / "idx", vectors, names)
    best = [path for _, path in reference(names, vectors, query, 200)]
    with VectorIndex.open_for_writing(tmp_path / "idx", MODEL, DIM) as index:
        index.remove_paths(best)  # the 200 best rows stay in the file, used by no file
    with open(tmp_path / "idx" / "vectors.f16", "ab") as f:  # rows a writer is appending: not committed
        f.write(np.full((3, DIM), np.nan, np.float16).tobytes() + np.full((3, DIM), 1.0, np.float16).tobytes())
    live = [i for i, name in enumerate(names) if name not in set(best)]
    expected = reference([names[i] for i in live], vectors[live], query, 10)
    for k in (10, len(live) + 5):
        with VectorIndex.open_for_reading(tmp_path / "idx", MODEL) as index:
            first, later = index.search(query[None], k=k)[0], index.search(query[None], k=k)[0]
        assert first == later and len(first) == min(k, len(live))
        assert_exact(first[:10], expected)
