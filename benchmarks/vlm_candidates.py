"""Candidates for `vitkit ask`'s default model, timed on this CPU at their real sizes with RANDOM weights.

Each candidate's architecture is built from its published config (benchmarks/_vlm_architectures.py) and
saved like the hub's; a child process per candidate then loads it and times, over the same photos:
- load_s: loading the saved folder (vitkit's loader, or from_pretrained + AutoProcessor);
- s_per_image: reading + preprocessing + generate with exactly --new-tokens new tokens (min_new_tokens =
  max), the fastest of the candidate's passes (other load on a shared machine only ever slows a pass);
- decode_ms_per_token: the median time between two generation steps (the language model's output layer
  timestamped by a hook), and prefill_s_per_image: the time to each generate call's first token (reading,
  preprocessing, vision tower, prompt prefill), per image, in the fastest pass;
- params, image tokens per image, and peak RSS (the child's own, ru_maxrss).
SmolVLM runs through `vitkit.ask`; Florence-2 and BLIP-2 have no chat template (vitkit ask needs one),
so they are timed as processor + `model.generate` (greedy, one beam) with their task prompt.

    python benchmarks/vlm_candidates.py                      # every candidate, BLIP-2 last (~25 min on 2 cores)
    python benchmarks/vlm_candidates.py --only smolvlm-256m,florence-2-b --new-tokens 16
    python benchmarks/vlm_candidates.py --tiny               # tiny versions of the same classes: checks the script

Prints one JSON line per candidate, then a markdown table with each candidate's s/image relative to
smolvlm-256m (default image splitting) measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _vlm_architectures import build_blip2_opt_2_7b, build_florence2_base, build_smolvlm  # noqa: E402

QUESTION = "Is there a person in this image?"
REFERENCE = "smolvlm-256m"
CHILD_TIMEOUT_S = 720


@dataclass(frozen=True)
class Candidate:
    hub_id: str
    build: Callable[..., int]
    runner: str = "vitkit"  # vitkit: vitkit.ask; direct: processor + model.generate with `prompt`
    prompt: str = QUESTION
    precision: str = "fp32"
    batch_size: int = 1
    image_count: int | None = None  # None: --images; else the photos cycled to this many
    warmup: bool = True  # one untimed 1-token image first (skipped where one image costs a minute)
    repeats: int = 3  # timed passes; the fastest is reported (other load on the box only slows a pass)
    note: str = ""


CANDIDATES: dict[str, Candidate] = {
    "smolvlm-256m": Candidate("HuggingFaceTB/SmolVLM-256M-Instruct", partial(build_smolvlm, size="256m"),
                              warmup=False, repeats=1, note="default processor: up to 4x4 512-px tiles + global view"),
    "smolvlm-256m-nosplit": Candidate("HuggingFaceTB/SmolVLM-256M-Instruct",
                                      partial(build_smolvlm, size="256m", splitting=False),
                                      note="do_image_splitting=False: one 512-px view"),
    "smolvlm-500m": Candidate("HuggingFaceTB/SmolVLM-500M-Instruct", partial(build_smolvlm, size="500m"),
                              warmup=False, repeats=1, note="default processor: up to 4x4 512-px tiles + global view"),
    "smolvlm-500m-nosplit": Candidate("HuggingFaceTB/SmolVLM-500M-Instruct",
                                      partial(build_smolvlm, size="500m", splitting=False),
                                      note="do_image_splitting=False: one 512-px view"),
    "florence-2-b": Candidate("florence-community/Florence-2-base", build_florence2_base, runner="direct",
                              prompt="<CAPTION>", note="task <CAPTION>, greedy (the model card uses 3 beams)"),
    "smolvlm-256m-nosplit-bf16": Candidate("HuggingFaceTB/SmolVLM-256M-Instruct",
                                           partial(build_smolvlm, size="256m", splitting=False), precision="bf16",
                                           note="--precision bf16 (emulated without AVX512-BF16/AMX)"),
    "smolvlm-256m-nosplit-b8": Candidate("HuggingFaceTB/SmolVLM-256M-Instruct",
                                         partial(build_smolvlm, size="256m", splitting=False), batch_size=8,
                                         image_count=8, note="batch 8 through vitkit.ask"),
    "blip2-opt-2.7b": Candidate("Salesforce/blip2-opt-2.7b", build_blip2_opt_2_7b, runner="direct",
                                prompt=f"Question: {QUESTION} Answer:", image_count=1, warmup=False, repeats=1,
                                note="ViT-g + Q-Former + OPT-2.7B; one image"),
}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def emit(result: dict[str, Any]) -> None:
    """Each stage prints the record so far: a child stopped by the timeout still reports what it measured."""
    print(json.dumps({**result, "peak_rss_mib": round(peak_rss_mib())}), flush=True)


def timed(action: Callable[[], Any]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def photos_for(candidate: Candidate, names: list[str]) -> list[str]:
    paths = [str(REPO_ROOT / "sample_data" / name) for name in names]
    count = candidate.image_count or len(paths)
    return [paths[i % len(paths)] for i in range(count)]


class VitkitRunner:
    """`vitkit.ask` on a model loaded once through vitkit's own loader."""

    def __init__(self, folder: Path, candidate: Candidate) -> None:
        import vitkit

        self.candidate = candidate
        self.model = vitkit.load_model(str(folder), task="ask", device="cpu", precision=candidate.precision)
        self.module, self.processor = self.model.module, self.model.assets.processor

    def prompt_inputs(self, image: Any) -> Any:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
        prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        return self.processor(images=[image], text=[prompt], return_tensors="pt")

    def run(self, paths: list[str], new_tokens: int) -> None:
        import vitkit

        records = list(vitkit.ask(paths, model=self.model, question=QUESTION, max_new_tokens=new_tokens,
                                  batch_size=self.candidate.batch_size, device="cpu", quiet=True))
        failed = [r.error for r in records if not r.ok]
        if failed:
            raise RuntimeError(f"vitkit.ask failed: {failed}")


class DirectRunner:
    """The checkpoint's processor and `model.generate`, greedy, one image at a time."""

    def __init__(self, folder: Path, candidate: Candidate) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from vitkit.models.acceleration import configure_threads

        configure_threads()  # the same threads vitkit's loader sets, so both runners get the same compute
        self.candidate = candidate
        self.module = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32).eval()
        self.processor = AutoProcessor.from_pretrained(folder)

    def prompt_inputs(self, image: Any) -> Any:
        return self.processor(images=[image], text=[self.candidate.prompt], return_tensors="pt")

    def run(self, paths: list[str], new_tokens: int) -> None:
        import torch
        from PIL import Image, ImageOps

        for path in paths:
            with Image.open(path) as opened:
                image = ImageOps.exif_transpose(opened).convert("RGB")
            with torch.inference_mode():
                self.module.generate(**self.prompt_inputs(image), max_new_tokens=new_tokens,
                                     min_new_tokens=new_tokens, do_sample=False, num_beams=1)


def token_counts(runner: VitkitRunner | DirectRunner, paths: list[str]) -> dict[str, list[int]]:
    from PIL import Image

    image_id = runner.module.config.image_token_id
    counts: dict[str, list[int]] = {"image_tokens": [], "prompt_tokens": []}
    for path in dict.fromkeys(paths):
        with Image.open(path) as opened:
            ids = runner.prompt_inputs(opened.convert("RGB"))["input_ids"][0]
        counts["image_tokens"].append(int((ids == image_id).sum()))
        counts["prompt_tokens"].append(len(ids))
    return counts


class TokenClock:
    """Timestamps of the language model's output layer, which runs once per generation step (for the
    whole batch): within one `generate` the first call ends the prefill and each later one a decode step,
    so per-token time comes from one run, as the median step, which other load on the box skews least."""

    def __init__(self, module: Any) -> None:
        self.times: list[float] = []
        module.get_output_embeddings().register_forward_hook(lambda *_: self.times.append(time.perf_counter()))

    def timed_pass(self, runner: VitkitRunner | DirectRunner, paths: list[str], new_tokens: int) -> dict[str, Any]:
        self.times.clear()
        start = time.perf_counter()
        runner.run(paths, new_tokens)
        total = time.perf_counter() - start
        groups = [self.times[i:i + new_tokens] for i in range(0, len(self.times), new_tokens)]
        # a generate call's first token: from the previous call's last token (or the start) on, so it
        # holds reading and preprocessing, the vision tower and the prompt's prefill
        ends = [start] + [group[-1] for group in groups[:-1]]
        return {"total": total, "first_token": [group[0] - end for group, end in zip(groups, ends)],
                "decode_steps": [b - a for group in groups for a, b in zip(group, group[1:])],
                "generation_steps": len(self.times)}


def measure(name: str, folder: Path, photo_names: list[str], new_tokens: int) -> None:
    """In the child: load, then generate `new_tokens` tokens over the photos (best of the candidate's
    repeats); prints the record after each stage."""
    import statistics

    candidate = CANDIDATES[name]
    paths = photos_for(candidate, photo_names)
    result: dict[str, Any] = {"candidate": name, "model": candidate.hub_id, "weights": "random",
                              "runner": "vitkit.ask" if candidate.runner == "vitkit" else "processor+generate",
                              "precision": candidate.precision, "batch_size": candidate.batch_size,
                              "images": len(paths), "new_tokens": new_tokens, "note": candidate.note}
    runner_class = VitkitRunner if candidate.runner == "vitkit" else DirectRunner
    import transformers  # noqa: F401  imported before the clock starts: load_s is the model's load alone
    import vitkit  # noqa: F401

    start = time.perf_counter()
    runner = runner_class(folder, candidate)
    result["load_s"] = round(time.perf_counter() - start, 2)
    result["params"] = sum(p.numel() for p in runner.module.parameters())
    result.update(token_counts(runner, paths))
    result["status"] = "loaded"
    emit(result)
    clock = TokenClock(runner.module)
    if candidate.warmup:
        result["warmup_s"] = round(timed(lambda: runner.run(paths[:1], 1)), 2)
    passes = []
    for _ in range(candidate.repeats):
        passes.append(clock.timed_pass(runner, paths, new_tokens))
        best = min(passes, key=lambda p: p["total"])
        steps = [step for p in passes for step in p["decode_steps"]]
        result.update(
            s_per_image=round(best["total"] / len(paths), 3),
            s_per_image_each_pass=[round(p["total"] / len(paths), 3) for p in passes],
            prefill_s_per_image=round(sum(best["first_token"]) / len(paths), 3),
            decode_ms_per_token=round(1000 * statistics.median(steps), 1) if steps else None,
            generation_steps=best["generation_steps"], status=f"ok ({len(passes)} of {candidate.repeats} passes)")
        emit(result)


def build(name: str, folder: Path, new_tokens: int, tiny: bool) -> None:
    params = CANDIDATES[name].build(folder, new_tokens=new_tokens, tiny=tiny)
    print(json.dumps({"built": name, "params": params}), flush=True)


def last_record(output: str | bytes | None) -> dict[str, Any] | None:
    text = output.decode(errors="replace") if isinstance(output, bytes) else (output or "")
    records = [line for line in text.splitlines() if line.startswith("{")]
    return json.loads(records[-1]) if records else None


def run_child(arguments: list[str], timeout: float) -> tuple[dict[str, Any] | None, str]:
    """-> (the child's last JSON record, why it stopped early or '')."""
    command = [sys.executable, __file__, *arguments]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as stopped:
        return last_record(stopped.stdout), f"stopped after {timeout:.0f} s"
    if done.returncode != 0:
        return last_record(done.stdout), f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"
    return last_record(done.stdout), ""


def run_candidate(name: str, args: argparse.Namespace) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix=f"vitkit-vlm-{name}-"))
    try:
        common = ["--new-tokens", str(args.new_tokens), *(["--tiny"] if args.tiny else [])]
        built, problem = run_child(["--build", name, str(folder), *common], args.timeout)
        if problem or built is None:
            return {"candidate": name, "status": f"build failed: {problem}"}
        measured, problem = run_child(["--measure", name, str(folder), "--images", args.images, *common],
                                      args.timeout)
        record = measured or {"candidate": name}
        if problem:
            record["status"] = f"{record.get('status', 'nothing measured')}; {problem}"
        return record
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def cpu_bf16_support() -> str:
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        return "unknown (no /proc/cpuinfo)"
    native = sorted(flags & {"avx512_bf16", "amx_bf16", "amx_tile"})
    widest = "avx512f" if "avx512f" in flags else "avx2" if "avx2" in flags else "below avx2"
    return f"native bf16: {', '.join(native) if native else 'none'} (widest SIMD {widest})"


def summary_table(records: list[dict[str, Any]]) -> str:
    reference = next((r.get("s_per_image") for r in records if r.get("candidate") == REFERENCE), None)
    rows = ["| candidate | runner | precision | batch | params (M) | image tokens | load s | s/image "
            f"| ratio vs {REFERENCE} | prefill s/image | decode ms/token | peak RSS MiB | status |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        seconds = r.get("s_per_image")
        ratio = f"{seconds / reference:.2f}" if seconds and reference else "-"
        params = f"{r['params'] / 1e6:.0f}" if r.get("params") else "-"
        tokens = "/".join(str(t) for t in r.get("image_tokens", [])) or "-"
        cells = [r.get("candidate"), r.get("runner", "-"), r.get("precision", "-"), r.get("batch_size", "-"), params,
                 tokens, r.get("load_s", "-"), seconds or "-", ratio, r.get("prefill_s_per_image", "-"),
                 r.get("decode_ms_per_token", "-"), r.get("peak_rss_mib", "-"), r.get("status", "-")]
        rows.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(rows)


def print_header() -> None:
    import platform

    import torch

    print("command:", " ".join([Path(sys.executable).name] + sys.argv))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
          f"{cpu_bf16_support()}, torch {torch.__version__}")
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(CANDIDATES), help=f"comma-separated, from: {', '.join(CANDIDATES)}")
    parser.add_argument("--images", default="astronaut.jpg,coffee.jpg",
                        help="photos from sample_data/, the same for every candidate (a square and a 3:2 one)")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=CHILD_TIMEOUT_S, help="seconds per child process")
    parser.add_argument("--tiny", action="store_true", help="tiny models of the same classes: checks the script")
    parser.add_argument("--build", nargs=2, metavar=("NAME", "FOLDER"), help=argparse.SUPPRESS)
    parser.add_argument("--measure", nargs=2, metavar=("NAME", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build:
        return build(args.build[0], Path(args.build[1]), args.new_tokens, args.tiny)
    if args.measure:
        return measure(args.measure[0], Path(args.measure[1]), args.images.split(","), args.new_tokens)
    names = args.only.split(",")
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        parser.error(f"unknown candidates {unknown}; choose from {', '.join(CANDIDATES)}")
    print_header()
    records = []
    for name in names:
        records.append(run_candidate(name, args))
        print(json.dumps(records[-1]), flush=True)
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(summary_table(records))


if __name__ == "__main__":
    main()
