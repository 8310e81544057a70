"""Benchmark: dataloader throughput on large JPEGs with and without JPEG draft (reduced-scale) decoding.

Run from the repo root:  python benchmarks/decode.py [--count N --workers W ...]
Both variants go through vitkit.inputs.data.iterate_batches with timm's eval transform, so the numbers
are those of the real inference input path, not of Pillow alone.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # works without the editable install too

import numpy as np
import PIL
import torch
from PIL import Image, ImageChops, ImageDraw
from timm.data import create_transform

from vitkit.models.backends.timm_ import resize_size
from vitkit.inputs.data import ImagePreprocess, iterate_batches
from vitkit.inputs.decode import DecodeOptions, decode_image
from vitkit.inputs.discover import InputItem


def make_jpeg(path: str, width: int, height: int, rng: np.random.Generator) -> None:
    # Flat or pure-noise images compress unrealistically (tiny or huge files) and decode at
    # unrealistic speed; a photo-like mix of gradients, blotchy texture, edges and sensor noise doesn't.
    # Smooth parts are built small and upscaled, noise comes from Pillow: full-size numpy is slow here.
    h, w = max(1, height // 8), max(1, width // 8)
    y, x = np.linspace(0, 1, h)[:, None], np.linspace(0, 1, w)[None, :]
    gradient = np.stack([c0 + c1 * x + c2 * y for c0, c1, c2 in rng.uniform(-80, 160, (3, 3))], -1)
    blotches = np.asarray(Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC))
    small = np.clip(0.6 * gradient + 0.4 * blotches, 0, 255).astype(np.uint8)
    image = Image.fromarray(small).resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(60):
        cx, cy, r = rng.integers(0, width), rng.integers(0, height), rng.integers(20, min(width, height) // 6 + 21)
        x0, y0, x1, y1 = cx - r, cy - r * rng.uniform(0.4, 1.6), cx + r, cy + r * rng.uniform(0.4, 1.6)
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill, outline=(0, 0, 0), width=6)
    noise = Image.merge("RGB", [Image.effect_noise((width, height), 6) for _ in range(3)])  # centred on 128
    ImageChops.add(image, noise, 1.0, -128).save(path, "JPEG", quality=90)


def run_pass(items, transform, options: DecodeOptions, batch_size: int, workers: int) -> float:
    """Seconds to push every image through the dataloader; any failed sample voids the measurement."""
    start = time.perf_counter()
    for batch in iterate_batches(items, ImagePreprocess(transform), batch_size, workers, options):
        failed = [s for s in batch.samples if not s.ok]
        if failed:
            raise SystemExit(f"decode failed: {failed[0].path}: {failed[0].error}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=24, help="number of JPEGs generated")
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per variant (after one warm-up)")
    parser.add_argument("--workers", type=int, default=0, help="dataloader workers; 0 = decode in-process")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--model-size", type=int, default=224, help="model input side S (crop_pct 0.9)")
    parser.add_argument("--quality-images", type=int, default=4, help="images compared for pixel difference")
    args = parser.parse_args()

    size = args.model_size
    draft_size = resize_size({"input_size": (3, size, size), "crop_pct": 0.9})
    # The same eval transform timm builds for a typical ViT; the object is picklable, as workers need.
    transform = create_transform(input_size=(3, size, size), crop_pct=0.9, interpolation="bicubic",
                                 mean=(0.5,) * 3, std=(0.5,) * 3)
    variants = {"full": DecodeOptions(draft_size=None), "draft": DecodeOptions(draft_size=draft_size)}

    print("command:", " ".join([Path(sys.executable).name] + sys.argv))
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "n/a"
    print(f"machine: {platform.machine()} {platform.system()}, cpu_count={os.cpu_count()}, usable cpus={affinity}, "
          f"torch threads={torch.get_num_threads()}")
    if hasattr(os, "getloadavg"):  # other load on the box skews both variants; worth seeing up front
        print("load average (1/5/15 min): " + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    print(f"versions: python {platform.python_version()}, torch {torch.__version__}, Pillow {PIL.__version__}")

    with tempfile.TemporaryDirectory(prefix="vitkit-decode-bench-") as tmp:
        rng = np.random.default_rng(0)
        paths = [os.path.join(tmp, f"img{i:03d}.jpg") for i in range(args.count)]
        for path in paths:
            make_jpeg(path, args.width, args.height, rng)
        mean_mb = statistics.mean(os.path.getsize(p) for p in paths) / 1e6
        print(f"data: {args.count} JPEGs {args.width}x{args.height} q90, mean {mean_mb:.1f} MB; model input {size}, "
              f"draft_size {draft_size}; batch {args.batch_size}, workers {args.workers}, repeats {args.repeats}")
        items = [InputItem(p) for p in paths]

        # Warm-up pays one-off costs (imports, allocator growth, page cache) outside the timing.
        for options in variants.values():
            run_pass(items, transform, options, args.batch_size, args.workers)
        times: dict[str, list[float]] = {name: [] for name in variants}
        for repeat in range(args.repeats):
            # Alternate which variant goes first so drift (thermal, background load) hits both alike.
            order = list(variants) if repeat % 2 == 0 else list(reversed(variants))
            for name in order:
                times[name].append(run_pass(items, transform, variants[name], args.batch_size, args.workers))

        # Median is the headline; the min..max spread shows how noisy the machine was during the run.
        print(f"\n{'variant':<8} {'images/s':>9} {'ms/image':>9}  {'min..max ms/image':>17}   (median of {args.repeats})")
        rate = {}
        for name in variants:
            seconds = statistics.median(times[name])
            rate[name] = args.count / seconds
            spread = f"{1000 * min(times[name]) / args.count:.1f}..{1000 * max(times[name]) / args.count:.1f}"
            print(f"{name:<8} {rate[name]:>9.2f} {1000 * seconds / args.count:>9.1f}  {spread:>17}")
        print(f"\ndraft decode speed-up: {rate['draft'] / rate['full']:.2f}x")

        # The speed is only worth having if the model sees (nearly) the same input.
        diffs, draft_shape = [], None
        for path in paths[: args.quality_images]:
            full, draft = (decode_image(path, variants[name]) for name in ("full", "draft"))
            draft_shape = draft.image.size
            diffs.append((transform(full.image) - transform(draft.image)).abs().mean().item())
        # Normalisation is (x - 0.5) / 0.5, so one tensor unit is 127.5 levels of 8-bit pixel value.
        mad = statistics.mean(diffs)
        print(f"draft decoded at {draft_shape[0]}x{draft_shape[1]}; mean |full - draft| over "
              f"{len(diffs)} preprocessed images: {mad:.4f} (tensor units) = {mad * 127.5:.2f} / 255 levels")


if __name__ == "__main__":
    main()
