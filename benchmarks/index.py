"""Benchmark: building a `vitkit index` against a plain open_clip embedding loop, same CLIP weights and images.

Run from the repo root:  python benchmarks/index.py [--model ARCH|FOLDER --count N --size WxH ...]
                         python benchmarks/index.py --megapixels 2 6 12      (one run per image size)
                         python benchmarks/index.py --quick                  (smoke test, well under a minute)

Contenders, on the same pinned cores and torch threads (--cpus):
  - vitkit index FOLDER as a CLI subprocess, into a fresh index each pass: discovery, file hashing,
    decoding, the model, and SQLite + vector-file writes. "steady" img/s takes out the fixed cost
    (start-up, imports, model loading) measured by a run on one image; "raw" keeps it.
  - a plain loop: PIL full decode + open_clip's own preprocess + encode_image, batched (--batch-size,
    vitkit's batch size too), unit-normalised vectors kept in memory; nothing written.
Also vitkit's model-only throughput and its in-process run() throughput (embedding without the index).
--model takes an open_clip architecture (random weights built here, nothing downloaded; default
ViT-B-32) or a folder in open_clip's local-dir layout (open_clip_config.json + weights).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path
from typing import Callable

from _common import (Contender, add_common_arguments, apply_quick, cli_contender, fmt_ratio, measure_all,
                     plain_batches, prepare_images, print_table, rate, ratio, run_sizes)

import open_clip
import torch

from vitkit.runtime.bench import consume, preprocess_one, time_model_only, timed
from vitkit.inputs.discover import InputItem
from vitkit.models.loading import load_model
from vitkit.models.registry import EMBED, resolve
from vitkit.runtime.runner import RunOptions, run
from vitkit.tasks.embed import EmbedTask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, count=48, size="2048x1536")
    parser.add_argument("--model", default="ViT-B-32", help="open_clip architecture (random weights) or local-dir folder")
    parser.add_argument("--precision", default="fp32", help="vitkit's --precision (the plain loop runs fp32)")
    args = parser.parse_args()
    apply_quick(args)

    run_sizes(args, f"open_clip {open_clip.__version__}", prepare_model, run_size)

def prepare_model(reference: str, folder: Path, seed: int, quick: bool) -> tuple[Path, str]:
    """A folder in open_clip's local-dir layout, which both vitkit and the plain loop load."""
    if Path(reference).is_dir():
        return Path(reference), f"weights from {reference}"
    from safetensors.torch import save_file

    model_cfg = open_clip.get_model_config(reference)
    if model_cfg is None:
        raise SystemExit(f"unknown open_clip architecture {reference!r}; see open_clip.list_models()")
    if quick:  # the same architecture, two vision blocks and one text block: a smoke test, not a measurement
        model_cfg = {**model_cfg, "vision_cfg": {**model_cfg["vision_cfg"], "layers": 2},
                     "text_cfg": {**model_cfg["text_cfg"], "layers": 1}}
    torch.manual_seed(seed)
    model = open_clip.CLIP(**model_cfg)
    folder.mkdir(parents=True)
    config = {"model_cfg": model_cfg,
              "preprocess_cfg": {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD)}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder, "random weights, seeded" + ("; --quick: 2 vision blocks, 1 text block" if quick else "")


def run_size(args: argparse.Namespace, model_dir: Path, size: tuple[int, int], folder: Path) -> None:
    paths, one = prepare_images(args, size, folder)
    fresh = (folder / f"index{i}" for i in itertools.count())  # every pass builds a new index from scratch

    def cli_args(images: Path) -> list[str]:
        return ["index", str(images), "--model", str(model_dir), "--index", str(next(fresh)), "--device", "cpu",
                "--precision", args.precision, "--batch-size", str(args.batch_size), "--format", "json", "--quiet"]

    contenders = [plain_contender(model_dir, paths, args.batch_size),
                  cli_contender("vitkit index", args.precision, str(args.batch_size), cli_args, one, folder / "all",
                                len(paths), warm_up=not args.quick)]
    measure_all(contenders, args.repeats)
    model_only, in_process = measure_in_process(args, model_dir, paths)
    report(contenders, len(paths), model_only, in_process)


def plain_contender(model_dir: Path, paths: list[str], batch_size: int) -> Contender:
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{model_dir}")
    model.eval()
    warm_paths = paths[:batch_size]
    return Contender("plain", "plain open_clip loop", "fp32", str(batch_size),
                     lambda: plain_loop(model, preprocess, warm_paths, batch_size),
                     lambda: timed(lambda: plain_loop(model, preprocess, paths, batch_size)))


def plain_loop(model: torch.nn.Module, preprocess: Callable, paths: list[str], batch_size: int) -> list:
    vectors = []
    with torch.inference_mode():
        for batch in plain_batches(paths, preprocess, batch_size):
            features = model.encode_image(batch)  # (B, D)
            vectors.append(torch.nn.functional.normalize(features, dim=-1).numpy())
    return vectors


def measure_in_process(args: argparse.Namespace, model_dir: Path, paths: list[str]) -> tuple[float, float]:
    """vitkit as a library: the model alone on ready tensors, and run() from files to vectors (no index)."""
    loaded = load_model(resolve(str(model_dir), EMBED), EMBED, "cpu", args.precision)
    task = EmbedTask(loaded)
    sample = preprocess_one(task, paths[0], True)
    model_only = statistics.median(time_model_only(task, sample, args.batch_size, len(paths), args.repeats))
    items, options = [InputItem(p) for p in paths], RunOptions(batch_size=args.batch_size)
    consume(run(task, items[:args.batch_size], options))  # warm-up
    end_to_end = statistics.median(len(paths) / timed(lambda: consume(run(task, items, options)))
                                   for _ in range(args.repeats))
    return model_only, end_to_end


def report(contenders: list[Contender], count: int, model_only: float, in_process: float) -> None:
    plain = next(c for c in contenders if c.kind == "plain")
    vitkit = next(c for c in contenders if c.kind == "vitkit")
    plain_rate = rate(count, plain.times) if plain.times else None
    rows = [{"name": plain.name, "precision": plain.precision, "steady": plain_rate, "note": plain.error}]
    if vitkit.error:
        rows.append({"name": vitkit.name, "precision": vitkit.precision, "note": "not measured: " + vitkit.error})
    else:
        rows.append({"name": vitkit.name, "precision": vitkit.precision, "steady": vitkit.cli.steady_rate,
                     "raw": vitkit.cli.raw_rate, "x": ratio(vitkit.cli.steady_rate, plain_rate),
                     "note": f"start-up+load {vitkit.cli.startup:.1f}s"})
    rows.append({"name": "vitkit run() in-process, no index", "precision": vitkit.precision, "steady": in_process,
                 "x": ratio(in_process, plain_rate)})
    rows.append({"name": "vitkit model only (ready tensors)", "precision": vitkit.precision, "steady": model_only,
                 "note": f"end-to-end run() / model-only = {in_process / model_only:.2f}"})
    print()
    print_table(rows, [("name", "contender", 34), ("precision", "prec", 5), ("steady", "img/s", 7),
                       ("raw", "img/s incl. start-up", 20), ("x", "x plain loop", 12), ("note", "note", 0)])
    print("(vitkit index img/s = (N-1) / (time on N images - time on 1 image): start-up and model loading taken "
          "out; '-' if the two times are too close to tell apart. The index also hashes every file and writes "
          "SQLite + vectors; the plain loop writes nothing)")
    if not vitkit.error:
        print(f"ratio vitkit index / plain open_clip loop: {fmt_ratio(ratio(vitkit.cli.steady_rate, plain_rate))}; "
              f"model-only {model_only:.2f} img/s")


if __name__ == "__main__":
    main()
