"""Benchmark: peak resident memory of each vitkit command on a 12 MP photo (issue 17).

Run from the repo root:  python benchmarks/memory.py                      (every command, one 4000x3000 JPEG)
                         python benchmarks/memory.py --batch 4            (4 photos in one batch)
                         python benchmarks/memory.py --only segment --json
                         python benchmarks/memory.py --only classify --size 640x480   (smoke test)

Each command runs through the real CLI (`python -m vitkit ... --device cpu`) in its own child process, on
tiny random models with real-size heads (benchmarks/_tiny_models.py: 150 ADE20K classes, 100 queries,
8 text prompts, ...) loaded by vitkit's own loader from a local folder, writing its files (--out-dir)
where the command has them, since writing full-resolution masks and overlays is part of the cost.
Peak memory is the whole child's maximum resident set as GNU `/usr/bin/time -f %M` reports it (KiB), or
where that is missing, the child's own VmHWM read by an atexit handler. The two differ by what native
libraries touch after that handler: with torch 2.14's CUDA build, its C exit() alone adds about 129 MB
(`python -c "import torch"`: 650 MB by GNU time, 521 MB by VmHWM), so the fallback reads low by that.
Decoding runs in the child itself (--workers 0 unless told otherwise), so the figure covers the whole
pipeline on any machine; files are made on min(4, cores) output threads, so --cpus (default 2) also sets
how many renders overlap.
The 1,500,000 KiB target (issue 17) applies to segment; the other commands are listed so regressions show.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # the model builders' save progress bars

from _common import REPO_ROOT, pin_cpus, print_header, write_images
import _tiny_models

TARGET_KIB = 1_500_000
BASELINE_IMPORTS = "import torch, transformers, vitkit.cli"
PROMPTS = ("a dog", "a cat", "grass", "the sky", "a person", "a car", "a tree", "a building")  # 8, as issue 17


@dataclass(frozen=True)
class Case:
    name: str
    command: str
    heads: str  # what makes the head real size, for the table
    model: str  # a _tiny_models builder
    args: tuple[str, ...] = ()
    writes_files: bool = False  # takes --out-dir
    has_target: bool = False


CASES = (
    Case("segment-semantic", "segment", "semantic, 150 classes", "segformer-ade", ("--mode", "semantic"), True, True),
    Case("segment-panoptic", "segment", "panoptic, 100 queries, 133 classes", "mask2former-coco",
         ("--mode", "panoptic"), True, True),
    Case("segment-text", "segment", f"text, {len(PROMPTS)} prompts", "clipseg",
         ("--mode", "text", *(a for p in PROMPTS for a in ("--prompt", p))), True, True),
    Case("detect", "detect", "100 queries, 91 classes", "detr-coco", (), True),
    Case("inpaint", "inpaint", "224 px, 16 px patches", "vitmae", (), True),
    Case("caption", "caption", "49408 tokens, 3 beams", "coca"),
    Case("classify", "classify", "1000 classes", "timm-vit"),
)


@dataclass
class Row:
    case: str
    command: str
    heads: str
    images: int
    batch_size: int
    peak_kib: int | None = None
    seconds: float | None = None
    has_target: bool = False
    files_written: int = 0
    error: str | None = None

    @property
    def peak_mb(self) -> float | None:
        return None if self.peak_kib is None else self.peak_kib * 1024 / 1e6

    @property
    def meets_target(self) -> str:
        if not self.has_target or self.peak_kib is None:
            return "-"
        return "yes" if self.peak_kib <= TARGET_KIB else "NO"


def gnu_time() -> str | None:
    """/usr/bin/time when it is GNU time (BSD's has no -f)."""
    path = shutil.which("time", path="/usr/bin:/bin") or None
    if path is None:
        return None
    probe = subprocess.run([path, "-f", "%M", "true"], capture_output=True, text=True)
    return path if probe.returncode == 0 and probe.stderr.strip().isdigit() else None


# Registers, in the measured process itself, writing its VmHWM (this address space's peak) as it exits.
# Not getrusage's ru_maxrss: Linux keeps that across execve, so a child would report its parent's peak.
_WRITE_VMHWM_AT_EXIT = """
import atexit, sys
def _write_peak(out=sys.argv.pop(1)):
    with open("/proc/self/status") as status:
        kib = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    with open(out, "w") as f:
        f.write(kib)
atexit.register(_write_peak)
"""
_RUN_VITKIT = "import runpy; sys.argv[0] = 'vitkit'; runpy.run_module('vitkit', run_name='__main__', alter_sys=True)"


def measured_argv(timer: str | None, peak_file: Path, code: str | None, vitkit_args: list[str]) -> list[str]:
    """`python -c code` (or `python -m vitkit vitkit_args` when code is None) with its peak written to peak_file."""
    if timer:
        program = ["-c", code] if code else ["-m", "vitkit"]
        return [timer, "-f", "%M", "-o", str(peak_file), sys.executable, *program, *vitkit_args]
    return [sys.executable, "-c", _WRITE_VMHWM_AT_EXIT + (code or _RUN_VITKIT), str(peak_file), *vitkit_args]


def measure(row: Row, argv: list[str], peak_file: Path, env: dict[str, str]) -> bool:
    """Runs argv, filling row's seconds and peak, or its error; True when it succeeded."""
    began = time.perf_counter()
    result = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT)
    row.seconds = time.perf_counter() - began
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("Command exited")]
        row.error = f"exit {result.returncode}: {lines[-1] if lines else 'no message'}"
        return False
    row.peak_kib = int(peak_file.read_text().strip().splitlines()[-1])
    return True


def run_case(case: Case, model_dir: Path, images: Path, work: Path, batch_size: int, workers: int,
             timer: str | None, env: dict[str, str]) -> Row:
    count = sum(1 for _ in images.iterdir())
    row = Row(case.name, case.command, case.heads, count, batch_size, has_target=case.has_target)
    out_dir, records, peak_file = work / case.name, work / f"{case.name}.jsonl", work / f"{case.name}.peak"
    vitkit_args = [case.command, str(images), *case.args, "--model", str(model_dir), "--device", "cpu",
                   "--batch-size", str(batch_size), "--workers", str(workers), "--output", str(records), "--quiet"]
    if case.writes_files:
        vitkit_args += ["--out-dir", str(out_dir)]
    if not measure(row, measured_argv(timer, peak_file, None, vitkit_args), peak_file, env):
        return row
    row.files_written = sum(1 for p in out_dir.rglob("*") if p.is_file()) if out_dir.exists() else 0
    failed = [r for r in map(json.loads, records.read_text().splitlines()) if r.get("error")]
    if failed:  # a failed image costs less than a processed one: its figure would flatter the command
        row.error = f"{len(failed)} image(s) failed: {failed[0]['error']}"
    return row


def run_baseline(timer: str | None, work: Path, env: dict[str, str]) -> Row:
    """The floor under every command: the interpreter with torch, transformers and vitkit's CLI imported."""
    row = Row("imports only", "-", "torch, transformers, vitkit.cli", 0, 0)
    peak_file = work / "baseline.peak"
    measure(row, measured_argv(timer, peak_file, BASELINE_IMPORTS, []), peak_file, env)
    return row


def selected_cases(only: list[str] | None) -> list[Case]:
    if not only:
        return list(CASES)
    known = {c.name for c in CASES} | {c.command for c in CASES}
    unknown = sorted(set(only) - known)
    if unknown:
        raise SystemExit(f"--only: unknown {', '.join(unknown)}; choose from {', '.join(sorted(known))}")
    return [c for c in CASES if c.name in only or c.command in only]


def child_environment(home: Path, threads: int) -> dict[str, str]:
    """Hermetic: a temp Hugging Face cache and vitkit home, offline, the same torch threads everywhere."""
    env = dict(os.environ, HF_HOME=str(home / "hf"), VITKIT_HOME=str(home / "vitkit"), HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.pop("VITKIT_DEBUG", None)
    return env


def print_rows(rows: list[Row]) -> None:
    titles = ("command", "mode / heads", "images", "batch", "peak KiB", "peak MB", "seconds",
              f"<= {TARGET_KIB:,} KiB", "files")
    table = [[r.case, r.heads, str(r.images or "-"), str(r.batch_size or "-"),
              "-" if r.peak_kib is None else f"{r.peak_kib:,}", "-" if r.peak_mb is None else f"{r.peak_mb:,.0f}",
              f"{r.seconds:.1f}", r.meets_target, str(r.files_written)] for r in rows]
    widths = [max(len(t), *(len(line[i]) for line in table)) for i, t in enumerate(titles)]
    print("  ".join(t.ljust(w) if i < 2 else t.rjust(w) for i, (t, w) in enumerate(zip(titles, widths))))
    for row, line in zip(rows, table):
        print("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
              + (f"  FAILED: {row.error}" if row.error else ""))


def total_memory_gib() -> float:
    with contextlib.suppress(OSError, StopIteration, ValueError):
        with open("/proc/meminfo") as meminfo:
            return next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal:")) / 2**20
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", metavar="CASE",
                        help="cases (segment-semantic, ...) or commands (segment, detect, ...) to run; default all")
    parser.add_argument("--size", default="4000x3000", help="WxH of the generated JPEG(s) (default 12 MP)")
    parser.add_argument("--batch", type=int, default=1, metavar="N",
                        help="N different photos of --size, all in one batch (--batch-size N)")
    parser.add_argument("--batch-size", type=int, default=None, metavar="B",
                        help="vitkit's --batch-size when it should differ from --batch (e.g. a command's default)")
    parser.add_argument("--content", choices=("photos", "synthetic"), default="photos",
                        help="photos: mosaics of sample_data/ photos with sensor grain; synthetic: gradients + grain")
    parser.add_argument("--workers", type=int, default=0,
                        help="vitkit's decoding processes; 0 (default) keeps decoding inside the measured process")
    parser.add_argument("--cpus", type=int, default=2, help="pin the children to this many cores and torch threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the results as one JSON document instead")
    args = parser.parse_args()
    cases = selected_cases(args.only)
    batch_size = args.batch_size or args.batch
    width, _, height = args.size.lower().partition("x")
    size = (int(width), int(height))

    cpus = pin_cpus(args.cpus)
    timer = gnu_time()
    if timer is None and not Path("/proc/self/status").exists():
        raise SystemExit("needs GNU time (/usr/bin/time -f) or Linux's /proc/self/status to read peak memory")
    human = sys.stderr if args.json else sys.stdout
    with tempfile.TemporaryDirectory(prefix="vitkit-memory-") as tmp:
        work = Path(tmp)
        paths = write_images(work / "images", args.batch, size, args.content, args.seed)
        jpeg_mb = statistics.mean(os.path.getsize(p) for p in paths) / 1e6
        with contextlib.redirect_stdout(human):
            print_header(cpus)
            print(f"memory: {total_memory_gib():.1f} GiB in all")
            print(f"images: {args.batch} JPEG {size[0]}x{size[1]} ({size[0] * size[1] / 1e6:.1f} MP), q90, "
                  f"{args.content}, mean {jpeg_mb:.2f} MB; --device cpu --workers {args.workers} "
                  f"--batch-size {batch_size}")
            print(f"peak: {'GNU ' + timer + ' -f %M' if timer else 'VmHWM of the child at exit'} "
                  f"(KiB; MB = KiB x 1024 / 1e6); seconds: the whole process, start-up and model loading included\n")
        sys.stdout.flush()  # before the per-case lines on stderr
        env = child_environment(work / "home", len(cpus))
        rows = [run_baseline(timer, work, env)]
        for case in cases:
            model_dir = _tiny_models.build(case.model, work / "models", args.seed)
            rows.append(run_case(case, model_dir, work / "images", work, batch_size, args.workers, timer, env))
            print(f"  {case.name}: {rows[-1].peak_kib} KiB, {rows[-1].seconds:.1f} s"
                  + (f" FAILED: {rows[-1].error}" if rows[-1].error else ""), file=sys.stderr)
    if args.json:
        print(json.dumps({"size": list(size), "images": args.batch, "batch_size": batch_size,
                          "jpeg_mb": round(jpeg_mb, 3),
                          "workers": args.workers, "cpus": len(cpus), "target_kib": TARGET_KIB,
                          "peak_source": timer or "VmHWM",
                          "rows": [{**asdict(r), "peak_mb": r.peak_mb, "meets_target": r.meets_target}
                                   for r in rows]}, indent=2))
    else:
        print_rows(rows)
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
