"""What the end-to-end benchmarks share: CPU pinning, test images, timing the CLI, the machine header, tables."""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # works without the editable install too

import numpy as np
import PIL
import torch
from PIL import Image, ImageChops

from vitkit.runtime.bench import synthetic_photo

SAMPLE_PHOTOS = sorted((REPO_ROOT / "sample_data").glob("*.jpg"))
QUICK = {"count": 4, "size": "640x480", "repeats": 1}  # --quick: a smoke test, not a measurement


def add_common_arguments(parser: argparse.ArgumentParser, count: int, size: str) -> None:
    parser.add_argument("--count", type=int, default=count, help="number of JPEGs generated")
    parser.add_argument("--size", default=size, help="WxH of the generated JPEGs")
    parser.add_argument("--megapixels", type=float, nargs="+", default=None, metavar="MP",
                        help="instead of --size: one run per value, 4:3 images of about MP megapixels (e.g. 2 6 12)")
    parser.add_argument("--content", choices=("photos", "synthetic"), default="photos",
                        help="photos: mosaics of sample_data/ photos with sensor grain; synthetic: gradients + grain")
    parser.add_argument("--batch-size", type=int, default=16, help="vitkit's batch size, and the batched baseline's")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per contender (median reported)")
    parser.add_argument("--cpus", type=int, default=2, help="pin every contender to this many cores, with as many torch threads")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and one pass: a smoke test in well under a minute")
    parser.add_argument("--seed", type=int, default=0)


def apply_quick(args: argparse.Namespace) -> None:
    if args.quick:
        args.count, args.size, args.repeats, args.megapixels = QUICK["count"], QUICK["size"], QUICK["repeats"], None
        args.batch_size = min(args.batch_size, 2)


def image_sizes(args: argparse.Namespace) -> list[tuple[int, int]]:
    if not args.megapixels:
        width, _, height = args.size.lower().partition("x")
        return [(int(width), int(height))]
    # 4:3, the common camera aspect; sides rounded to multiples of 16 like real sensors' outputs.
    return [(16 * round(math.sqrt(mp * 1e6 * 4 / 3) / 16), 16 * round(math.sqrt(mp * 1e6 * 3 / 4) / 16))
            for mp in args.megapixels]


def pin_cpus(count: int) -> list[int]:
    """Give this process, its dataloader workers and the CLI subprocesses the same `count` cores,
    and torch as many threads, so every contender gets the same compute whatever the machine."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    chosen = cpus[:count]
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, chosen)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(len(chosen))
    torch.set_num_threads(len(chosen))
    return chosen


def print_header(cpus: Sequence[int], extra_versions: str = "") -> None:
    print("command:", " ".join([Path(sys.executable).name] + sys.argv))
    print(f"machine: {platform.processor() or platform.machine()} {platform.system()}, cpu_count={os.cpu_count()}, "
          f"pinned to cpus {list(cpus)}, torch threads={torch.get_num_threads()}")
    if hasattr(os, "getloadavg"):  # other load on the box skews every contender; worth seeing up front
        print("load average (1/5/15 min): " + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    print(f"versions: python {platform.python_version()}, torch {torch.__version__}, Pillow {PIL.__version__}"
          + (f", {extra_versions}" if extra_versions else ""))


def write_images(folder: Path, count: int, size: tuple[int, int], content: str, seed: int) -> list[str]:
    """`count` JPEGs (q90) in `folder`; photographic content matters, as it sets JPEG decode speed."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        image = photo_mosaic(size, rng) if content == "photos" else synthetic_photo(size, rng)
        path = folder / f"img{i:04d}.jpg"
        image.save(path, "JPEG", quality=90)
        paths.append(str(path))
    return paths


def prepare_images(args: argparse.Namespace, size: tuple[int, int], folder: Path) -> tuple[list[str], Path]:
    """The N images in folder/all and the first alone in folder/one; prints what they are."""
    paths = write_images(folder / "all", args.count, size, args.content, args.seed)
    one = one_image_folder(paths, folder / "one")
    mean_mb = statistics.mean(os.path.getsize(p) for p in paths) / 1e6
    print(f"\n=== {args.count} JPEGs {size[0]}x{size[1]} ({size[0] * size[1] / 1e6:.1f} MP), q90, {args.content}, "
          f"mean {mean_mb:.2f} MB ===")
    return paths, one


def run_sizes(args: argparse.Namespace, extra_versions: str, prepare_model: Callable[..., tuple[Path, str]],
              run_size: Callable[[argparse.Namespace, Path, tuple[int, int], Path], None], model_note: str = "") -> None:
    """Pin the cores, print the header, build the model folder once, then one full run per image size."""
    cpus = pin_cpus(args.cpus)
    print_header(cpus, extra_versions)
    with tempfile.TemporaryDirectory(prefix="vitkit-bench-") as tmp:
        model_dir, weights = prepare_model(args.model, Path(tmp) / "model", args.seed, args.quick)
        print(f"model: {args.model} ({weights}); batch size {args.batch_size}; repeats {args.repeats}{model_note}")
        for size in image_sizes(args):
            run_size(args, model_dir, size, Path(tmp) / f"{size[0]}x{size[1]}")


def photo_mosaic(size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A grid of the sample photos, each scaled to cover its cell, plus grain so upscaled cells are not
    unrealistically smooth (smooth JPEGs decode faster than camera photos)."""
    width, height = size
    grid = max(1, round(math.sqrt(width * height / 1.5e6)))  # cells of about 1.5 MP, near the photos' own size
    canvas = Image.new("RGB", size)
    for row in range(grid):
        for col in range(grid):
            x0, y0 = col * width // grid, row * height // grid
            cell = (((col + 1) * width // grid) - x0, ((row + 1) * height // grid) - y0)
            with Image.open(SAMPLE_PHOTOS[rng.integers(len(SAMPLE_PHOTOS))]) as photo:
                canvas.paste(cover(photo.convert("RGB"), cell), (x0, y0))
    grain = Image.merge("RGB", [Image.effect_noise(size, 5) for _ in range(3)])  # centred on 128
    return ImageChops.add(canvas, grain, 1.0, -128)


def cover(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    scale = max(size[0] / image.width, size[1] / image.height)
    scaled = image.resize((math.ceil(image.width * scale), math.ceil(image.height * scale)), Image.BICUBIC)
    left, top = (scaled.width - size[0]) // 2, (scaled.height - size[1]) // 2
    return scaled.crop((left, top, left + size[0], top + size[1]))


def plain_batches(paths: Sequence[str], transform: Callable, batch_size: int) -> Iterator[torch.Tensor]:
    """What a plain script does: PIL full decode, the library's own transform, torch.stack; (B, 3, H, W)."""
    for start in range(0, len(paths), batch_size):
        inputs = []
        for path in paths[start:start + batch_size]:
            with Image.open(path) as image:
                inputs.append(transform(image.convert("RGB")))
        yield torch.stack(inputs)


def one_image_folder(paths: Sequence[str], folder: Path) -> Path:
    """A folder with just the first image: the CLI run that measures start-up and model loading."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(paths[0], folder / Path(paths[0]).name)
    return folder


@dataclass
class CliTimes:
    """Wall times of whole `vitkit` processes on one image and on all N images."""

    count: int
    one: list[float]
    all: list[float]

    @property
    def raw_rate(self) -> float:
        """Images/s including interpreter start-up, imports and model loading."""
        return self.count / statistics.median(self.all)

    @property
    def steady_rate(self) -> float | None:
        """Images/s with the fixed cost (the 1-image run, minus its one image) taken out; None when the
        difference drowns in the noise of process start-up (too few images)."""
        difference = statistics.median(self.all) - statistics.median(self.one)
        return (self.count - 1) / difference if difference > 0.02 * statistics.median(self.all) else None

    @property
    def startup(self) -> float:
        return statistics.median(self.one)


class CliFailed(RuntimeError):
    pass


def time_cli(args: Sequence[str], env: dict[str, str] | None = None) -> float:
    """Seconds for one `python -m vitkit ...` process; a failure raises with the CLI's own message."""
    began = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "vitkit", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT)
    seconds = time.perf_counter() - began
    if result.returncode != 0:
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        raise CliFailed(f"exit {result.returncode}: {lines[-1] if lines else 'no message'}")
    return seconds


@dataclass
class Contender:
    kind: str  # "pipeline", "plain-1", "plain-batched" or "vitkit"
    name: str
    precision: str
    batch: str
    warm: Callable[[], object]
    measure: Callable[[], float]  # seconds for all N images
    times: list[float] = field(default_factory=list)
    cli: CliTimes | None = None  # set for vitkit CLI contenders
    error: str | None = None


def cli_contender(name: str, precision: str, batch: str, cli_args: Callable[[Path], list[str]], one_dir: Path,
                  all_dir: Path, count: int, warm_up: bool = True) -> Contender:
    """A vitkit command timed as whole processes, on one image and on all: `cli_args(folder)` builds its argv."""
    times = CliTimes(count, [], [])

    def measure() -> float:
        times.one.append(time_cli(cli_args(one_dir)))
        times.all.append(time_cli(cli_args(all_dir)))
        return times.all[-1]

    # Without the warm-up process the first timed pass is a cold one (page cache, .pyc): fine for --quick.
    warm = (lambda: time_cli(cli_args(one_dir))) if warm_up else (lambda: None)
    return Contender("vitkit", name, precision, batch, warm, measure, cli=times)


def measure_all(contenders: list[Contender], repeats: int) -> None:
    """Warm each contender up, then time them in turns, so drift in machine load hits all alike.
    A contender that fails its warm-up (say a precision this build lacks) is reported, not fatal."""
    for contender in contenders:
        try:
            contender.warm()
        except Exception as exc:  # noqa: BLE001 - any failure voids only this contender
            contender.error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, CliFailed) else str(exc)
            print(f"  {contender.name} {contender.precision}: not measured: {contender.error}", file=sys.stderr)
    for _ in range(repeats):
        for contender in (c for c in contenders if c.error is None):
            contender.times.append(contender.measure())


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return None if numerator is None or not denominator else numerator / denominator


def fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def rate(count: int, seconds: Sequence[float]) -> float:
    return count / statistics.median(seconds)


def print_table(rows: list[dict], columns: Sequence[tuple[str, str, int]]) -> None:
    """columns: (key, title, width); floats printed with 2 decimals, missing values as '-'."""
    print("  ".join(f"{title:>{width}}" if i else f"{title:<{width}}" for i, (_, title, width) in enumerate(columns)))
    for row in rows:
        cells = []
        for i, (key, _, width) in enumerate(columns):
            value = row.get(key)
            text = "-" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)
            cells.append(f"{text:>{width}}" if i else f"{text:<{width}}")
        print("  ".join(cells))
