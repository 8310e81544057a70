"""Dedup's building blocks on synthetic vectors: exact neighbours against brute force, and how links become tiers."""

from __future__ import annotations

import numpy as np
import pytest

from vitkit.retrieval import neighbours
from vitkit.retrieval.grouping import link_items
from vitkit.retrieval.neighbours import ExactNeighbours


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float16)


@pytest.mark.parametrize("k", [1, 3, 50])
def test_exact_neighbours_equal_brute_force(k: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # Blocks smaller than the data, so queries, candidates and the triangle's edges all cross blocks.
    monkeypatch.setattr(neighbours, "QUERY_BLOCK", 7)
    monkeypatch.setattr(neighbours, "CANDIDATE_BLOCK", 16)
    rng = np.random.default_rng(0)
    vectors = unit(rng.standard_normal((80, 8)))
    rows = np.sort(rng.choice(80, 53, replace=False))  # not contiguous: gathered from the file
    threshold = 0.1
    found: dict[int, dict[int, float]] = {}
    for block in ExactNeighbours(vectors, rows).pairs(threshold, k):
        assert not np.any(block.left == block.right)
        for left, right, score in zip(block.left, block.right, block.score):
            found.setdefault(int(left), {})[int(right)] = float(score)
    exact = vectors[rows].astype(np.float32) @ vectors[rows].astype(np.float32).T
    np.fill_diagonal(exact, -np.inf)
    for i in range(len(rows)):
        best = [j for j in np.argsort(-exact[i], kind="stable")[:min(k, len(rows) - 1)] if exact[i, j] >= threshold]
        assert sorted(found.get(i, {})) == sorted(best)
        for j, score in found.get(i, {}).items():
            assert score == pytest.approx(exact[i, j], abs=1e-5)


def pair_at(cosine: float, rng: np.random.Generator, dim: int = 16) -> np.ndarray:
    """Two unit vectors at the given cosine, in a random direction."""
    a, b = rng.standard_normal((2, dim))
    a /= np.linalg.norm(a)
    b -= (b @ a) * a
    b /= np.linalg.norm(b)
    return np.stack([a, cosine * a + np.sqrt(1 - cosine ** 2) * b])


def test_near_needs_both_the_hash_and_the_embedding_floor() -> None:
    rng = np.random.default_rng(1)
    # Items 0-1: hashes agree, cosine 0.95. 2-3: hashes differ, cosine 0.95. 4-5: hashes agree (a collision),
    # cosine 0.5. Pairs are far apart from each other (random directions in 16 dimensions).
    vectors = unit(np.concatenate([pair_at(0.95, rng), pair_at(0.95, rng), pair_at(0.5, rng)]))
    same_hash = {frozenset((0, 1)), frozenset((4, 5))}

    def agree(left: np.ndarray, right: np.ndarray) -> np.ndarray:
        return np.array([frozenset((int(a), int(b))) in same_hash for a, b in zip(left, right)])

    search = ExactNeighbours(vectors, np.arange(6))
    strict = link_items(search, threshold=0.97, near_floor=0.90, near=agree)
    assert strict.near[0] == strict.near[1] and strict.linked[0] == strict.linked[1]
    assert strict.linked[2] != strict.linked[3]  # 0.95 is below the similar threshold, and the hashes differ
    assert strict.linked[4] != strict.linked[5]  # the hashes collide but the embeddings disagree
    lenient = link_items(search, threshold=0.93, near_floor=0.90, near=agree)
    assert lenient.linked[2] == lenient.linked[3] and lenient.near[2] != lenient.near[3]  # similar, not near
    assert len(set(lenient.linked.tolist())) == 4


def clustered_with_duplicates(rng: np.random.Generator, count: int = 3000, dim: int = 32) -> np.ndarray:
    """Clusters (cosine ~0.7 to their centre), 5% of them planted copies of an earlier item at cosine 0.95-0.999."""
    centres = rng.standard_normal((30, dim))
    noise = rng.standard_normal((count, dim))
    vectors = centres[rng.integers(0, 30, count)] / np.sqrt(dim) + noise / np.sqrt(dim)
    for i in rng.choice(np.arange(1, count), count // 20, replace=False):
        original = vectors[rng.integers(0, i)]
        jitter = rng.standard_normal(dim)
        vectors[i] = original / np.linalg.norm(original) + rng.uniform(0.05, 0.3) * jitter / np.linalg.norm(jitter)
    return unit(vectors)


def pair_sets(search, threshold: float, k: int) -> dict[tuple[int, int], float]:
    found = {}
    for block in search.pairs(threshold, k):
        assert not np.any(block.left == block.right)
        found.update({(int(a), int(b)): float(s) for a, b, s in zip(block.left, block.right, block.score)})
    return found


@pytest.mark.parametrize("restricted", [False, True])
def test_ann_neighbours_equal_exact_neighbours_at_generous_settings(restricted: bool) -> None:
    """Every list scanned and a large pool: the faiss IVF-PQ path finds the exact pairs, with exact scores,
    also when only some of the index's rows are in scope (the others filtered out while scanning)."""
    from vitkit.retrieval import ann
    from vitkit.retrieval.ann_neighbours import AnnNeighbours

    rng = np.random.default_rng(3)
    vectors = clustered_with_duplicates(rng)
    index = ann.build(vectors, np.arange(len(vectors)), "test", 0)
    rows = np.sort(rng.choice(len(vectors), 2000, replace=False)) if restricted else np.arange(len(vectors))
    approximate = AnnNeighbours(vectors, rows, index, probes=index.header.nlist, pool=300)
    exact = pair_sets(ExactNeighbours(vectors, rows), 0.9, 16)
    found = pair_sets(approximate, 0.9, 16)
    assert len(exact) > 50  # the planted copies
    assert found.keys() == exact.keys()
    for pair, score in found.items():
        assert score == pytest.approx(exact[pair], abs=1e-5)


def test_a_file_that_cannot_be_hashed_is_named_with_its_reason() -> None:
    """Bad input is reported per file: the path and why, never only a count."""
    from tests.conftest import GOOD_SAMPLES, SAMPLE_DATA, SAMPLE_ERRORS
    from vitkit.retrieval.phash import PerceptualHashes

    paths = [str(SAMPLE_DATA / GOOD_SAMPLES[0]), str(SAMPLE_ERRORS / "truncated.jpg"), str(SAMPLE_ERRORS / "empty.jpg")]
    hashes = PerceptualHashes(lambda item: paths[item])
    assert hashes.distance(0, 1) is None and hashes.distance(0, 0) == 0
    hashes.prepare([2])
    failed = dict(hashes.failed)
    assert list(failed) == sorted(paths[1:])
    assert all(reason.strip() for reason in failed.values())
    assert paths[0] not in failed
