"""Benchmark: dedup's grouping (neighbour links + connected components) on synthetic clustered vectors.

Run from the repo root:  python benchmarks/dedup.py [--count N --dim D --json]
The parent writes the data; the grouping runs in a child process that only maps it and reports its own
peak resident memory (VmHWM) before and after grouping: the interpreter and torch, then what grouping
N vectors costs, the pages of the mapped vector file included.

Data (fixed seed): N unit vectors in a float16 file, as the index stores them. Clustered, as image
embeddings are: N/100 centres, each item a centre plus anisotropic noise (per-dimension scales decaying
as 1/sqrt(rank)) at cosine ~0.7 to its centre. A fraction (--planted, default 2%) are planted
duplicates of an earlier item at cosine 0.977-0.999: half `near` (a 64-bit hash within 8 bits of
the original's), half `similar` bursts (an unrelated hash). Every other item has its own random hash.
Reported: time, peak memory, and the planted pairs found (recall) and false links between unplanted items.

The neighbour search is dedup's own choice (--search auto): the approximate one (faiss IVF-PQ, as the
index keeps it, built here in the child and timed apart as ann_build_s) from vitkit's ANN threshold
(100,000 vectors), the exact one below it. --search exact|ann forces one; --probes/--pool set the
approximate search's lists scanned and candidates re-ranked per item.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # works without the editable install too

import numpy as np

GENERATE_BLOCK = 8192


def vm_hwm_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


def reset_peak() -> None:
    """Start VmHWM again from the current RSS (Linux: 5 to /proc/self/clear_refs)."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def generate(path: Path, count: int, dim: int, planted: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Writes the (count, dim) float16 file; returns the hashes, each item's original (-1: none) and
    whether its plant is near (True) or a similar burst (False)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, count // 100), dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    scales = (1.0 / np.sqrt(np.arange(1, dim + 1))).astype(np.float32)[rng.permutation(dim)]
    hashes = rng.integers(0, 2**63, size=count, dtype=np.int64).astype(np.uint64)
    original = np.full(count, -1, dtype=np.int64)
    is_plant = rng.random(count) < planted
    is_plant[0] = False
    original[is_plant] = (rng.random(is_plant.sum()) * np.flatnonzero(is_plant)).astype(np.int64)
    near = is_plant & (rng.random(count) < 0.5)
    vectors = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(count, dim))
    for start in range(0, count, GENERATE_BLOCK):
        stop = min(start + GENERATE_BLOCK, count)
        noise = rng.standard_normal((stop - start, dim)).astype(np.float32) * scales
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        block = centres[rng.integers(0, len(centres), stop - start)] + noise
        vectors[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    for i in np.flatnonzero(is_plant):  # after the originals exist; an original may itself be a plant
        jitter = rng.standard_normal(dim).astype(np.float32)
        epsilon = rng.uniform(0.05, 0.21)  # cosine 1 / sqrt(1 + eps^2): 0.978-0.999
        copy = vectors[original[i]].astype(np.float32) + epsilon * jitter / np.linalg.norm(jitter)
        vectors[i] = copy / np.linalg.norm(copy)
        if near[i]:
            flips = rng.choice(64, size=rng.integers(0, 9), replace=False)
            hashes[i] = hashes[original[i]] ^ np.uint64(sum(1 << int(b) for b in flips))
    vectors.flush()
    return hashes, original, near


def child(args: argparse.Namespace) -> dict:
    import torch

    from vitkit.retrieval.grouping import link_items

    torch.set_num_threads(args.threads)
    folder = Path(args.data)
    vectors = np.load(folder / "vectors.npy", mmap_mode="r")
    hashes, original, near = (np.load(folder / f"{name}.npy") for name in ("hashes", "original", "near"))
    before = vm_hwm_mb()

    def agree(left: np.ndarray, right: np.ndarray) -> np.ndarray:
        differ = hashes[left] ^ hashes[right]
        return np.unpackbits(differ.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1) <= 16

    started = time.perf_counter()
    search, build_s = neighbour_search(args, vectors)
    started += build_s
    build_peak = vm_hwm_mb()
    reset_peak()  # from here VmHWM is grouping's own peak (dedup reuses the index's persisted ANN file)
    search_peak: list[float] = []

    class Measured:  # the search's own peak, before the links become components
        def __len__(self) -> int:
            return len(search)

        def pairs(self, threshold: float, k: int):
            yield from search.pairs(threshold, k)
            search_peak.append(vm_hwm_mb())

    links = link_items(Measured(), args.threshold, args.near_floor, agree)
    group_s = time.perf_counter() - started
    peak = vm_hwm_mb()
    plants = np.flatnonzero(original >= 0)
    near_found = links.near[plants[near[plants]]] == links.near[original[plants[near[plants]]]]
    burst_found = links.linked[plants] == links.linked[original[plants]]
    # Items that are neither planted nor an original of a plant should stay alone.
    involved = np.zeros(args.count, dtype=bool)
    involved[plants] = True
    involved[original[plants]] = True
    sizes = np.bincount(links.linked)
    false_links = int((sizes[links.linked[~involved]] > 1).sum())
    return {"count": args.count, "dim": args.dim, "threshold": args.threshold, "near_floor": args.near_floor,
            "planted": int(len(plants)), "near_recall": float(near_found.mean()) if len(near_found) else 1.0,
            "linked_recall": float(burst_found.mean()) if len(burst_found) else 1.0,
            "unplanted_items_linked": false_links, "near_links": links.near_links,
            "similar_links": links.similar_links, "group_s": round(group_s, 1),
            "rss_before_grouping_mb": round(before, 1), "peak_rss_mb": round(peak, 1),
            "vector_file_mb": round(args.count * args.dim * 2 / 2**20, 1),
            "n_squared_float32_mb": round(args.count ** 2 * 4 / 2**20, 1), "threads": args.threads,
            "query_limit": args.query_limit, "search": type(search).__name__, "ann_build_s": round(build_s, 1),
            "ann_build_peak_rss_mb": round(build_peak, 1) if build_s else None,
            "search_peak_rss_mb": round(search_peak[0], 1) if search_peak else None,
            **({"probes": search.probes, "pool": search.pool} if hasattr(search, "probes") else {})}


def neighbour_search(args: argparse.Namespace, vectors: np.ndarray):
    """(the neighbour search dedup would use, seconds spent building the ANN index for it)."""
    from vitkit.retrieval import ann
    from vitkit.retrieval.ann_neighbours import PROBES, POOL, AnnNeighbours
    from vitkit.retrieval.approximate import ann_min_files
    from vitkit.retrieval.neighbours import ExactNeighbours

    rows = np.arange(args.count)
    approximate = args.search == "ann" or (args.search == "auto" and args.count >= ann_min_files())
    if not approximate:
        return ExactNeighbours(vectors, rows, args.query_limit), 0.0
    started = time.perf_counter()
    index = ann.build(vectors, rows, "benchmark", 0)
    return AnnNeighbours(vectors, rows, index, args.probes or PROBES, args.pool or POOL), time.perf_counter() - started


def run(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        started = time.perf_counter()
        hashes, original, near = generate(Path(folder) / "vectors.npy", args.count, args.dim, args.planted, args.seed)
        for name, array in (("hashes", hashes), ("original", original), ("near", near)):
            np.save(Path(folder) / f"{name}.npy", array)
        generate_s = time.perf_counter() - started
        command = [sys.executable, os.path.abspath(__file__), "--child", "--data", folder, *sys.argv[1:]]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(done.stderr)
    return {**json.loads(done.stdout.splitlines()[-1]), "generate_s": round(generate_s, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--planted", type=float, default=0.02, help="fraction of items planted as duplicates")
    parser.add_argument("--threshold", type=float, default=0.97, help="the similar tier's cosine (dedup's default)")
    parser.add_argument("--near-floor", type=float, default=0.90)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", default=None, help="where the temporary vector file goes")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--query-limit", type=int, default=None,
                        help="score only the first N items as queries: the memory peak at full size in minutes, "
                             "not the groups (recall is then meaningless) nor the full time")
    parser.add_argument("--search", choices=("auto", "exact", "ann"), default="auto",
                        help="neighbour search: auto (dedup's choice by size), exact or ann")
    parser.add_argument("--probes", type=int, default=None, help="ann: inverted lists scanned per item")
    parser.add_argument("--pool", type=int, default=None, help="ann: candidates re-ranked exactly per item")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    result = run(args)
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:>26}  {value}")


if __name__ == "__main__":
    main()
