"""Benchmark: `vitkit classify` end to end against the usual ways of running the same timm weights.

Run from the repo root:  python benchmarks/classify.py [--model ARCH|FOLDER --count N --size WxH ...]
                         python benchmarks/classify.py --megapixels 2 6 12     (one run per image size)
                         python benchmarks/classify.py --quick                 (smoke test, well under a minute)

Contenders, all on the same weights, the same JPEGs, the same pinned cores and torch threads (--cpus):
  - vitkit classify as a CLI subprocess, per --precisions; "steady" img/s takes out the fixed cost
    (interpreter start-up, imports, model loading) measured by a run on one image; "raw" keeps it.
  - transformers' pipeline("image-classification") called once per file path (the common usage),
    loaded from the very same timm folder through transformers' TimmWrapper classes.
  - a plain loop: PIL full decode + timm's own resolve_data_config/create_transform + the model,
    batch size 1, and batched (--batch-size, vitkit's batch size too).
Also: vitkit's model-only throughput against its in-process end-to-end throughput (what the data path
costs), and for each reduced precision the top-1 agreement with fp32 and the largest probability change.
A warm-up pass precedes every contender's timing; each figure is the median of --repeats passes,
passes interleaved across contenders so drift in machine load hits them alike.
--model takes a timm architecture name (random weights built here, nothing downloaded) or a folder
saved by timm's save_for_hf (e.g. real weights).
"""

from __future__ import annotations

import argparse
import math
import statistics
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from _common import (Contender, add_common_arguments, apply_quick, cli_contender, fmt_ratio, measure_all,
                     plain_batches, prepare_images, print_table, rate, ratio, run_sizes)

import numpy as np
import timm
import torch
import transformers
from PIL import Image
from timm.data import create_transform, resolve_data_config

from vitkit.runtime.bench import time_model_only, timed
from vitkit.runtime.bench import consume as consume_records
from vitkit.runtime.bench import preprocess_one
from vitkit.errors import VitkitError
from vitkit.models.loading import load_model
from vitkit.models.precision_check import compare_probabilities
from vitkit.models.registry import CLASSIFY, resolve
from vitkit.runtime.runner import RunOptions, run
from vitkit.tasks.classify import ClassifyTask

TOP_K = 5  # what every contender computes per image: vitkit's and the pipeline's default
BASELINES = {"pipeline": "transformers pipeline", "plain-1": "plain loop batch 1", "plain-batched": "plain loop batched"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, count=48, size="2048x1536")
    parser.add_argument("--model", default="vit_small_patch16_224",
                        help="timm architecture (random weights; --quick keeps 2 blocks) or save_for_hf folder")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "int8"],
                        help="vitkit precisions to time; the first is the reference for agreement (use fp32)")
    parser.add_argument("--no-draft-row", action=argparse.BooleanOptionalAction, default=True,
                        help="also time vitkit fp32 with --no-draft (full JPEG decode, as the baselines do)")
    args = parser.parse_args()
    apply_quick(args)
    args.no_draft_row = args.no_draft_row and not args.quick

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    run_sizes(args, f"timm {timm.__version__}, transformers {transformers.__version__}", prepare_model, run_size,
              f"; top-k {TOP_K}")

def prepare_model(reference: str, folder: Path, seed: int, quick: bool) -> tuple[Path, str]:
    if Path(reference).is_dir():
        return Path(reference), f"weights from {reference}"
    from timm.models import save_for_hf

    torch.manual_seed(seed)
    # --quick keeps the architecture but only two blocks: a smoke test, not a measurement.
    model = timm.create_model(reference, pretrained=False, **({"depth": 2} if quick else {}))
    head = model.get_classifier()
    with torch.no_grad():
        # Random weights give near-uniform probabilities whose top-1 flips on rounding noise; a head
        # scaled for logits of std ~3 makes the precision-agreement figures mean something.
        head.weight.normal_(0, 3 / math.sqrt(head.in_features))
        head.bias.zero_()
    save_for_hf(model, str(folder), safe_serialization=True)
    return folder, "random weights, seeded; head scaled to logit std ~3" + ("; --quick: 2 blocks" if quick else "")


def run_size(args: argparse.Namespace, model_dir: Path, size: tuple[int, int], folder: Path) -> None:
    paths, one = prepare_images(args, size, folder)
    contenders = baseline_contenders(model_dir, paths, args.batch_size)
    contenders += vitkit_contenders(args, model_dir, folder / "all", one, len(paths))
    measure_all(contenders, args.repeats)
    report(contenders, len(paths))
    in_process = measure_in_process(args, model_dir, paths)
    report_data_path(contenders, in_process)
    report_agreement(in_process, args.precisions[0])


def baseline_contenders(model_dir: Path, paths: list[str], batch_size: int) -> list[Contender]:
    pipe, note = load_pipeline(model_dir)
    print(f"transformers pipeline: {note}")
    model = timm.create_model(f"local-dir:{model_dir}", pretrained=True).eval()
    transform = create_transform(**resolve_data_config({}, model=model), is_training=False)
    check_same_weights(pipe.model, model, transform, paths[0])

    def plain(batch: int, subset: list[str]) -> float:
        return timed(lambda: plain_loop(model, transform, subset, batch))

    return [
        Contender("pipeline", "transformers pipeline", "fp32", "1 (per path)", lambda: [pipe(p, top_k=TOP_K) for p in paths[:2]],
                  lambda: timed(lambda: [pipe(p, top_k=TOP_K) for p in paths])),
        Contender("plain-1", "plain timm loop", "fp32", "1", lambda: plain(1, paths[:2]), lambda: plain(1, paths)),
        Contender("plain-batched", "plain timm loop", "fp32", str(batch_size), lambda: plain(batch_size, paths[:batch_size]),
                  lambda: plain(batch_size, paths)),
    ]


def load_pipeline(model_dir: Path) -> tuple[Callable, str]:
    """pipeline() on the folder as a user would call it; when this transformers cannot read timm's
    save_for_hf config as is, the same weights through TimmWrapper with that config mended."""
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification, TimmWrapperImageProcessor, pipeline

    try:
        return pipeline("image-classification", model=str(model_dir), device="cpu"), "pipeline(model=FOLDER)"
    except Exception as exc:  # noqa: BLE001 - any failure here means: try the mended config
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:60]
    config = TimmWrapperConfig.from_pretrained(model_dir)
    # timm records num_classes in model_args and TimmWrapper passes num_classes=num_labels as well:
    # "got multiple values for keyword argument 'num_classes'" in transformers 5.x.
    config.model_args = {k: v for k, v in (config.model_args or {}).items() if k != "num_classes"} or None
    model = TimmWrapperForImageClassification.from_pretrained(model_dir, config=config)
    processor = TimmWrapperImageProcessor.from_pretrained(model_dir)
    note = (f"pipeline(model=FOLDER) failed ({first}); loaded TimmWrapperForImageClassification with "
            "num_classes dropped from config.model_args, same weights file")
    return pipeline("image-classification", model=model, image_processor=processor, device="cpu"), note


def check_same_weights(hf_model: torch.nn.Module, model: torch.nn.Module, transform: Callable, path: str) -> None:
    with Image.open(path) as image, torch.inference_mode():
        x = transform(image.convert("RGB")).unsqueeze(0)  # (1, 3, H, W)
        difference = (hf_model(pixel_values=x).logits - model(x)).abs().max().item()
    print(f"same weights check: max |logit difference| pipeline model vs timm model = {difference:.2e}")
    if difference > 1e-3:
        raise SystemExit("the pipeline's model does not match the timm model: ratios would compare different models")


def plain_loop(model: torch.nn.Module, transform: Callable, paths: list[str], batch_size: int) -> None:
    with torch.inference_mode():
        for batch in plain_batches(paths, transform, batch_size):
            model(batch).softmax(dim=-1).topk(TOP_K)


def vitkit_contenders(args: argparse.Namespace, model_dir: Path, all_dir: Path, one_dir: Path,
                      count: int) -> list[Contender]:
    variants = [(p, []) for p in args.precisions] + ([("fp32", ["--no-draft"])] if args.no_draft_row else [])
    contenders = []
    for precision, extra in variants:
        def cli_args(folder: Path, precision=precision, extra=extra) -> list[str]:
            return ["classify", str(folder), "--model", str(model_dir), "--device", "cpu", "--precision", precision,
                    "--batch-size", str(args.batch_size), "--top-k", str(TOP_K), "--format", "jsonl", "--quiet", *extra]

        contenders.append(cli_contender(" ".join(["vitkit classify", *extra]), precision, str(args.batch_size),
                                        cli_args, one_dir, all_dir, count, warm_up=not args.quick))
    return contenders


def report(contenders: list[Contender], count: int) -> None:
    baseline = {c.kind: rate(count, c.times) for c in contenders if c.kind != "vitkit" and c.times}
    rows = []
    for c in contenders:
        row = {"name": c.name, "precision": c.precision, "batch": c.batch}
        if c.error:
            rows.append({**row, "note": "not measured: " + c.error[:80]})
            continue
        row["spread"] = f"{min(c.times):.1f}..{max(c.times):.1f}s"
        if c.cli is None:
            rows.append({**row, "steady": rate(count, c.times)})
            continue
        steady = c.cli.steady_rate
        rows.append({**row, "steady": steady, "raw": c.cli.raw_rate, "note": f"start-up+load {c.cli.startup:.1f}s",
                     **{kind: ratio(steady, baseline.get(kind)) for kind in BASELINES}})
    print()
    print_table(rows, [("name", "contender", 31), ("precision", "prec", 5), ("batch", "batch", 12),
                       ("steady", "img/s", 7), ("raw", "img/s incl. start-up", 20), ("pipeline", "x pipeline", 10),
                       ("plain-1", "x plain b1", 10), ("plain-batched", "x plain batched", 15),
                       ("spread", "pass times", 12), ("note", "note", 0)])
    print("(vitkit = the CLI in a subprocess; its img/s = (N-1) / (time on N images - time on 1 image): start-up "
          "and model loading taken out; '-' if the two times are too close to tell apart; "
          "'x' columns: vitkit img/s / the baseline's img/s)")
    for row in rows:
        if "plain-1" in row or "pipeline" in row:
            print(f"ratio {row['name'].replace(' classify', '')} {row['precision']}: "
                  + ", ".join(f"{fmt_ratio(row.get(kind))} vs {title}" for kind, title in BASELINES.items()))


@dataclass
class InProcess:
    precision: str
    model_only: float | None = None
    end_to_end: float | None = None
    probabilities: np.ndarray | None = None  # (N, num_classes), by class id
    error: str | None = None


def measure_in_process(args: argparse.Namespace, model_dir: Path, paths: list[str]) -> list[InProcess]:
    """vitkit as a library: model-only and run() end to end, and every class's probability for agreement."""
    from vitkit.inputs.discover import InputItem

    results, items = [], [InputItem(p) for p in paths]
    options = RunOptions(batch_size=args.batch_size)
    for precision in args.precisions:
        result = InProcess(precision)
        try:
            loaded = load_model(resolve(str(model_dir), CLASSIFY), CLASSIFY, "cpu", precision)
            task = ClassifyTask(loaded, top_k=TOP_K)
            sample = preprocess_one(task, paths[0], True)
            result.model_only = statistics.median(time_model_only(task, sample, args.batch_size, len(paths),
                                                                  args.repeats))
            consume_records(run(task, items[:args.batch_size], options))  # warm-up
            result.end_to_end = statistics.median(
                len(paths) / timed(lambda: consume_records(run(task, items, options))) for _ in range(args.repeats))
            result.probabilities = all_probabilities(ClassifyTask(loaded, top_k=len(task.labels)), items, options)
        except (VitkitError, RuntimeError) as exc:
            result.error = str(exc)
        results.append(result)
    return results


def all_probabilities(task: ClassifyTask, items: list, options: RunOptions) -> np.ndarray:
    rows = []
    for record in run(task, items, options):
        probabilities = np.zeros(len(task.labels))
        for p in record.fields["predictions"]:
            probabilities[p["class_id"]] = p["score"]
        rows.append(probabilities)
    return np.stack(rows)


def report_data_path(contenders: list[Contender], in_process: list[InProcess]) -> None:
    cli = {c.precision: c.cli.steady_rate for c in contenders if c.cli and c.times and "draft" not in c.name}
    rows = []
    for r in in_process:
        if r.error:
            rows.append({"precision": r.precision, "note": "not measured: " + r.error[:80]})
            continue
        share = 1 - r.end_to_end / r.model_only
        rows.append({"precision": r.precision, "model_only": r.model_only, "end_to_end": r.end_to_end,
                     "cli": cli.get(r.precision), "ratio": r.end_to_end / r.model_only,
                     "share": f"{100 * share:.0f}%"})
    print("\nmodel-only vs end-to-end (vitkit in-process: the model on ready tensors, then run() from files)")
    print_table(rows, [("precision", "prec", 5), ("model_only", "model-only img/s", 16),
                       ("end_to_end", "run() img/s", 11), ("cli", "CLI steady img/s", 16),
                       ("ratio", "end-to-end / model-only", 23), ("share", "time not in the model", 21),
                       ("note", "note", 0)])


def report_agreement(in_process: list[InProcess], reference: str) -> None:
    ref = next((r for r in in_process if r.precision == reference and r.probabilities is not None), None)
    others = [r for r in in_process if r.precision != reference and r.probabilities is not None]
    if ref is None or not others:
        return
    print(f"\nagreement with {reference} on the same images (all class probabilities compared)")
    for r in others:
        agreement = compare_probabilities(ref.probabilities, r.probabilities)
        print(f"  {r.precision}: top-1 agreement {agreement.top1_agreement:.3f} "
              f"({round(agreement.top1_agreement * agreement.images)}/{agreement.images}), "
              f"max |probability difference| {agreement.max_abs_prob_diff:.2e}")


if __name__ == "__main__":
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        main()
