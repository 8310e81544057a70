"""Benchmark: exact search over the on-disk index (float16 memmap, chunked) against brute force in memory.

Run from the repo root:  python benchmarks/search.py [--count N --dim D --dir DIR ...]
The index is built through the public API (VectorIndex.add in batches, with made-up file states and
hashes: hashing real files is not what is measured). The baseline is what a script would do with the
same vectors already in RAM as one float32 array: `X @ q` and a top-k, in the same process and run.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # works without the editable install too

import numpy as np
import torch  # imported up front, as in the CLI after loading a model, so it is not in the cold timing

from vitkit.retrieval.index import Entry, FileState, VectorIndex
from vitkit.retrieval.vectors import vectors_file_name

MODEL_KEY = "benchmark-random"


def fake_batch(start: int, count: int, dim: int, rng: np.random.Generator) -> list[Entry]:
    """Entries for images start..start+count: 1000 per folder, blake2b-looking hashes, random unit-ish vectors."""
    vectors = rng.standard_normal((count, dim), dtype=np.float32)  # (B, D); add() normalises
    return [Entry(FileState(f"/bench/photos/{i // 1000:04d}/img{i:07d}.jpg", 200_000 + i, 1_700_000_000_000_000_000 + i),
             hashlib.blake2b(i.to_bytes(8, "little"), digest_size=16).hexdigest(), vectors[j], 640, 480)
            for j, i in enumerate(range(start, start + count))]


def build(folder: Path, count: int, dim: int, batch: int, seed: int) -> float:
    """Seconds spent inside add() (generating the random vectors is not counted)."""
    rng = np.random.default_rng(seed)
    spent = 0.0
    with VectorIndex.open_for_writing(folder, MODEL_KEY, dim, rebuild=True) as index:
        for start in range(0, count, batch):
            entries = fake_batch(start, min(batch, count - start), dim, rng)
            began = time.perf_counter()
            index.add(entries)
            spent += time.perf_counter() - began
    return spent


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return times


def brute_force(matrix: np.ndarray, queries: np.ndarray, k: int) -> list[np.ndarray]:
    """Row indices of the top k per query: the in-memory float32 baseline (matmul + argpartition + sort)."""
    scores = queries @ matrix.T  # (Q, N) float32
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return [row[np.argsort(-s[row])] for row, s in zip(top, scores)]


def percentile(times: list[float], p: float) -> float:
    return float(np.percentile(times, p))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=1_000_000, help="vectors (images) in the index")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--batch", type=int, default=50_000, help="entries per add() call (one transaction)")
    parser.add_argument("--repeats", type=int, default=20, help="timed searches per measurement")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--batch-queries", type=int, default=16)
    parser.add_argument("--dir", type=Path, default=None, help="where to build the index (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        run(Path(tmp) / "index", args)


def run(folder: Path, args: argparse.Namespace) -> None:
    n, dim, k = args.count, args.dim, args.k
    print(f"# {n:,} vectors, dim {dim}, k={k}; {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"numpy {np.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads)")
    build_s = build(folder, n, dim, args.batch, args.seed)

    rng = np.random.default_rng(args.seed + 1)
    one = rng.standard_normal((1, dim), dtype=np.float32)
    many = rng.standard_normal((args.batch_queries, dim), dtype=np.float32)

    began = time.perf_counter()
    index = VectorIndex.open_for_reading(folder, MODEL_KEY)
    index.search(one, k=k)
    cold_s = time.perf_counter() - began
    ours_1 = timed(lambda: index.search(one, k=k), args.repeats)
    ours_q = timed(lambda: index.search(many, k=k), args.repeats)
    hits = index.search(many, k=k)
    stats = index.stats()
    index.close()

    # The baseline gets exactly the stored (float16-rounded) vectors, so both rank the same numbers.
    matrix = np.fromfile(folder / vectors_file_name(0), dtype="<f2").reshape(-1, dim)[:n].astype(np.float32)
    unit = lambda q: q / np.linalg.norm(q, axis=1, keepdims=True)  # noqa: E731 - the index normalises too
    base_1 = timed(lambda: brute_force(matrix, unit(one), k), args.repeats)
    base_q = timed(lambda: brute_force(matrix, unit(many), k), args.repeats)
    expected = brute_force(matrix, unit(many), k)
    names = [[f"img{i:07d}.jpg" for i in rows] for rows in expected]
    agree = np.mean([len({h.path.rsplit("/", 1)[1] for h in got} & set(want)) / k for got, want in zip(hits, names)])

    report(args, build_s, cold_s, ours_1, ours_q, base_1, base_q, agree, stats, folder)


def report(args, build_s, cold_s, ours_1, ours_q, base_1, base_q, agree, stats, folder: Path) -> None:
    n, q = args.count, args.batch_queries
    print(f"build through add(): {build_s:.1f} s ({n / build_s:,.0f} vectors/s, batches of {args.batch:,})")
    print(f"open_for_reading + first query (new instance, OS page cache warm): {cold_s * 1000:.0f} ms")
    print()
    print(f"{'search (ms)':<24}{'median':>10}{'p95':>10}{'baseline median':>18}{'baseline p95':>15}{'ratio (median)':>16}")
    for label, ours, base in ((f"Q=1, k={args.k}", ours_1, base_1), (f"Q={q} batch, k={args.k}", ours_q, base_q)):
        ratio = statistics.median(ours) / statistics.median(base)
        print(f"{label:<24}{statistics.median(ours) * 1000:>10.1f}{percentile(ours, 95) * 1000:>10.1f}"
              f"{statistics.median(base) * 1000:>18.1f}{percentile(base, 95) * 1000:>15.1f}{ratio:>15.2f}x")
    print(f"(baseline: np.float32 matmul over all {n:,} vectors held in RAM as one float32 array, "
          f"{n * args.dim * 4 / 2**30:.2f} GiB, + argpartition; ratio > 1 means the index is slower)")
    print(f"top-{args.k} agreement with the baseline over the Q={q} batch: {agree:.3f}")
    vector_bytes = (folder / vectors_file_name(0)).stat().st_size
    print(f"index size on disk: {stats.bytes_on_disk / n:,.0f} bytes per image (vectors.f16 {vector_bytes / n:,.0f} "
          f"+ sqlite {(stats.bytes_on_disk - vector_bytes) / n:,.0f}); {stats.bytes_on_disk / 2**30:.2f} GiB in all")


if __name__ == "__main__":
    main()
