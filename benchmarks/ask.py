"""`vitkit ask` speed and memory at the default model's real size, with RANDOM weights.

SmolVLM-256M-Instruct's weights cannot be downloaded where this was written, so the script builds its
architecture (Idefics3: a SigLIP-B/16 tower at 512 px, pixel-shuffle connector, SmolLM2-135M) from the
published config with random weights, and a processor that splits images as SmolVLM's does (512-px
tiles of an image fitted into 2048 px, plus a global view, 64 tokens each). Time per token and memory
do not depend on the weights' values; the number of new tokens is fixed (random weights need not stop).

    python benchmarks/ask.py --batch-sizes 1,8 --images 8 --new-tokens 32 [--precision bf16]

Each (batch size, precision) runs in a child process, so peak RSS is that run's alone.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _vlm_architectures import build_smolvlm  # noqa: E402


def run_once(model: str, images: list[str], batch_size: int, precision: str, new_tokens: int) -> dict:
    import vitkit

    start = time.perf_counter()
    records = list(vitkit.ask(images, model=model, question="Is there a person in this image?", batch_size=batch_size,
                              max_new_tokens=new_tokens, precision=precision, device="cpu", quiet=True))
    seconds = time.perf_counter() - start
    assert all(r.ok for r in records), [r.error for r in records if not r.ok]
    return {"batch_size": batch_size, "precision": precision, "images": len(images), "new_tokens": new_tokens,
            "s_per_image": seconds / len(images),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--precision", default="fp32", help="fp32, bf16 or both (comma-separated)")
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "BATCH", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    photos = sorted(str(p) for p in (REPO_ROOT / "sample_data").glob("*.jpg"))
    images = [photos[i % len(photos)] for i in range(args.images)]
    if args.child:
        model, batch, precision = args.child
        print(json.dumps(run_once(model, images, int(batch), precision, args.new_tokens)))
        return
    folder = Path(tempfile.mkdtemp(prefix="vitkit-smolvlm-random-"))
    try:
        params = build_smolvlm(folder, "256m", new_tokens=args.new_tokens)
        print(json.dumps({"model": "SmolVLM-256M architecture, random weights", "params": params}), flush=True)
        for precision in args.precision.split(","):
            for batch in args.batch_sizes.split(","):
                count = max(int(batch), min(args.images, 2 * int(batch)))
                command = [sys.executable, __file__, "--child", str(folder), batch, precision,
                           "--images", str(count), "--new-tokens", str(args.new_tokens)]
                print(subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip(), flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
