"""Benchmark: search over the on-disk index as users meet it: approximate (the default on big indexes),
exact (--exact), and brute force over the same vectors held in RAM by numpy.

Run from the repo root:  python benchmarks/search.py [--count N] [--json] [--dir DIR]

Vectors are not uniform noise (which has no neighbourhoods and makes every ANN look bad) but a clustered
mixture shaped like image embeddings, fixed by the constants below and --seed:
  - CENTRES cluster centres, uniform on the unit sphere, with log-normal(0, 1) cluster sizes (the
    biggest cluster ~0.4% of the images, the smallest ~0.0003%);
  - every vector shares a common direction of norm CONE (CLIP embeddings sit in a narrow cone);
  - each vector = CONE * cone + centre + deviation, the deviation anisotropic: N(0, 1) per axis scaled
    by a power law (axis i gets i^-DECAY, rescaled to total norm SPREAD), the scales rolled by a per-centre
    offset so each cluster stretches along other axes; nearest-neighbour cosine is about 0.8.
Queries come from a shifted distribution, as text embeddings sit apart from image embeddings in CLIP
space: a random centre + CONE * cone + SHIFT * a fixed random direction + small isotropic noise
(QUERY_NOISE); their best cosine is about 0.65.

The index is built through the public API (IndexWriter.add in batches, with made-up file states and
hashes: hashing real files is not what is measured). Exact and approximate searches go through
IndexReader.search (exact=True / default); the baseline is `X @ q` + a top-k over one float32 array in RAM.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # works without the editable install too

import numpy as np
import torch  # imported up front, as in the CLI after loading a model, so it is not in the cold timing

from vitkit.retrieval.index import Entry, FileState, VectorIndex
from vitkit.retrieval.vectors import map_vectors, vectors_file_name

MODEL_KEY = "benchmark-clustered"
CENTRES = 4_000
CONE = 0.6
SPREAD = 0.7
DECAY = 0.6
SHIFT = 1.2
QUERY_NOISE = 0.3
ADDED = 10_000  # vectors added to the finished index for add_10k_s


class Mixture:
    """The clustered mixture: any range of image vectors, deterministic for (seed, start)."""

    def __init__(self, dim: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.dim, self.seed = dim, seed
        self.centres = _unit(rng.standard_normal((CENTRES, dim), dtype=np.float32))
        self.cone = _unit(rng.standard_normal((1, dim), dtype=np.float32))[0]
        self.shift = _unit(rng.standard_normal((1, dim), dtype=np.float32))[0]
        self.sizes = rng.lognormal(0.0, 1.0, CENTRES)
        scales = np.arange(1, dim + 1, dtype=np.float32) ** -DECAY
        self.scales = scales * (SPREAD / np.linalg.norm(scales))

    def images(self, start: int, count: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, start])
        labels = rng.choice(CENTRES, count, p=self.sizes / self.sizes.sum())
        deviation = rng.standard_normal((count, self.dim), dtype=np.float32)
        for centre in np.unique(labels):
            members = labels == centre
            deviation[members] *= np.roll(self.scales, (int(centre) * 37) % self.dim)
        return CONE * self.cone + self.centres[labels] + deviation

    def queries(self, count: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 2**32 - 1])  # apart from every image chunk's stream
        labels = rng.integers(0, CENTRES, count)
        noise = rng.standard_normal((count, self.dim), dtype=np.float32) * (QUERY_NOISE / np.sqrt(self.dim))
        return _unit(self.centres[labels] + CONE * self.cone + SHIFT * self.shift + noise)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def entries(mixture: Mixture, start: int, count: int) -> list[Entry]:
    vectors = mixture.images(start, count)
    return [Entry(FileState(f"/bench/photos/{i // 1000:04d}/img{i:07d}.jpg", 200_000 + i, 1_700_000_000_000_000_000 + i),
                  hashlib.blake2b(i.to_bytes(8, "little"), digest_size=16).hexdigest(), vectors[j], 640, 480)
            for j, i in enumerate(range(start, start + count))]


def build(folder: Path, mixture: Mixture, count: int, batch: int) -> tuple[float, float]:
    """(seconds inside add(), seconds building the ANN index from scratch)."""
    add_s = 0.0
    index = VectorIndex.open_for_writing(folder, MODEL_KEY, mixture.dim, rebuild=True)
    try:
        for start in range(0, count, batch):
            chunk = entries(mixture, start, min(batch, count - start))
            began = time.perf_counter()
            index.add(chunk)
            add_s += time.perf_counter() - began
            progress(f"{start + len(chunk):,} added")
        began = time.perf_counter()
        index.sync_ann()
        ann_s = time.perf_counter() - began
    finally:
        index.close()
    return add_s, ann_s


def add_more(folder: Path, mixture: Mixture, start: int) -> float:
    """Seconds to add ADDED new images to the finished index: open, add, close (which syncs the ANN index)."""
    chunk = entries(mixture, start, ADDED)
    began = time.perf_counter()
    with VectorIndex.open_for_writing(folder, MODEL_KEY, mixture.dim) as index:
        index.add(chunk)
    return time.perf_counter() - began


def timed(fn, inputs) -> list[float]:
    times = []
    for item in inputs:
        began = time.perf_counter()
        fn(item)
        times.append(time.perf_counter() - began)
    return times


def ms(times: list[float], p: float) -> float:
    return round(float(np.percentile(times, p)) * 1000, 2)


def brute_force(matrix: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    scores = matrix @ query  # (N,) float32
    top = np.argpartition(-scores, k - 1)[:k]
    return top[np.argsort(-scores[top])]


def progress(text: str) -> None:
    print(f"# {time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)


def measure(folder: Path, args: argparse.Namespace) -> dict:
    n, k = args.count, args.k
    mixture = Mixture(args.dim, args.seed)
    progress(f"building {n:,} vectors")
    add_s, ann_build_s = build(folder, mixture, n, args.batch)
    progress(f"built (add {add_s:.1f} s, ANN {ann_build_s:.1f} s); searching")
    queries = mixture.queries(args.queries)

    began = time.perf_counter()
    reader = VectorIndex.open_for_reading(folder, MODEL_KEY)
    reader.search(queries[0], k=k)
    first_query_ms = (time.perf_counter() - began) * 1000
    ann_times = timed(lambda q: reader.search(q, k=k), queries)
    approximate = [reader.search(q, k=k)[0] for q in queries]
    reader.close()

    began = time.perf_counter()
    reader = VectorIndex.open_for_reading(folder, MODEL_KEY)
    reader.search(queries[0], k=k, exact=True)
    exact_first_query_ms = (time.perf_counter() - began) * 1000
    exact_times = timed(lambda q: reader.search(q, k=k, exact=True), queries[:args.exact_repeats])
    exact = [reader.search(q, k=k, exact=True)[0] for q in queries]
    bytes_on_disk = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    reader.close()
    recall = float(np.mean([len({h.path for h in a} & {h.path for h in e}) / k for a, e in zip(approximate, exact)]))
    if args.sweep:
        sweep(folder, queries, exact, args)

    # The baseline gets exactly the stored (float16-rounded) vectors, so both rank the same numbers.
    progress("numpy baseline")
    matrix = np.asarray(map_vectors(folder / vectors_file_name(0), mixture.dim), dtype=np.float32)
    numpy_times = timed(lambda q: brute_force(matrix, q, k), queries[:args.exact_repeats])
    del matrix

    progress(f"adding {ADDED:,}")
    add_10k_s = add_more(folder, mixture, n)
    return {
        "count": n, "dim": args.dim, "k": k, "queries": args.queries,
        "exact_p50_ms": ms(exact_times, 50), "exact_p95_ms": ms(exact_times, 95),
        "numpy_p50_ms": ms(numpy_times, 50),
        "ann_p50_ms": ms(ann_times, 50), "ann_p95_ms": ms(ann_times, 95),
        "recall_at_10": round(recall, 4),
        "ann_build_s": round(ann_build_s, 1), "add_s": round(add_s, 1), "add_10k_s": round(add_10k_s, 2),
        "bytes_per_image": round(bytes_on_disk / n), "first_query_ms": round(first_query_ms, 1),
        "exact_first_query_ms": round(exact_first_query_ms, 1),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
                   f"{torch.__version__} ({torch.get_num_threads()} threads), numpy {np.__version__}",
    }


def sweep(folder: Path, queries: np.ndarray, exact: list, args: argparse.Namespace) -> None:
    """Latency and recall at other probe shares and pools (to stderr), to choose the defaults."""
    from vitkit.retrieval import approximate

    defaults = approximate.PROBE_SHARE, approximate.POOL
    with VectorIndex.open_for_reading(folder, MODEL_KEY) as reader:
        for share in args.sweep:
            for pool in args.sweep_pools:
                approximate.PROBE_SHARE, approximate.POOL = share, pool
                times = timed(lambda q: reader.search(q, k=args.k), queries)
                found = [reader.search(q, k=args.k)[0] for q in queries]
                recall = np.mean([len({h.path for h in a} & {h.path for h in e}) / args.k for a, e in zip(found, exact)])
                progress(f"probe share {share}, pool {pool}: p50 {ms(times, 50)} ms, p95 {ms(times, 95)} ms, "
                         f"recall@10 {recall:.4f}")
    approximate.PROBE_SHARE, approximate.POOL = defaults


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1_000_000, help="vectors (images) in the index")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--batch", type=int, default=50_000, help="entries per add() call (one transaction)")
    parser.add_argument("--queries", type=int, default=200, help="approximate searches timed (and recall queries)")
    parser.add_argument("--exact-repeats", type=int, default=20, help="exact and numpy searches timed")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--dir", type=Path, default=None, help="where to build the index (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--sweep", type=float, nargs="*", default=[], metavar="SHARE",
                        help="also report (on stderr) ANN latency and recall at these shares of lists scanned")
    parser.add_argument("--sweep-pools", type=int, nargs="*", default=[1000], metavar="POOL",
                        help="with --sweep: candidate pools to try")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        result = measure(Path(tmp) / "index", args)
    if args.json:
        print(json.dumps(result))
        return
    width = max(map(len, result))
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
