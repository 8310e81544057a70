"""The issue's GPU figures in one short run: ViT-B/16 classify and CLIP ViT-B/32 embedding (as `vitkit
index` runs it), model-only vs end-to-end img/s from JPEG files, and their ratio (target >= 0.80).

Random weights built here (throughput does not depend on their values), so it needs no Hub access.
Run from the repo root on a CUDA machine:  python benchmarks/gpu.py [--images 1024 --size 1920x1080]
It exits 1 without CUDA, so a device check fails loudly instead of timing the CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import torch

from vitkit.runtime.bench import BenchOptions, parse_size, run_bench
from vitkit.runtime.report import Reporter
from vitkit.runtime.runner import RunOptions

TARGET_RATIO = 0.80


def save_vit_b16(folder: Path) -> str:
    import timm
    from timm.models import save_for_hf

    save_for_hf(timm.create_model("vit_base_patch16_224", pretrained=False), str(folder), safe_serialization=True)
    return str(folder)


def save_clip_b32(folder: Path) -> str:
    import open_clip
    from safetensors.torch import save_file

    model = open_clip.create_model("ViT-B-32")
    folder.mkdir(parents=True)
    config = {"model_cfg": open_clip.get_model_config("ViT-B-32"),
              "preprocess_cfg": {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD)}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return str(folder)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--size", default="1920x1080", help="WxH of the generated JPEGs")
    parser.add_argument("--batch-size", type=int, default=None, help="default: vitkit's GPU default")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: this script measures the GPU path only", file=sys.stderr)
        return 1
    print(f"device: {torch.cuda.get_device_name(0)}; torch {torch.__version__}; {args.images} JPEGs of {args.size}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="vitkit-gpu-") as tmp:
        for name, save in (("ViT-B/16 classify", save_vit_b16), ("CLIP ViT-B/32 embed", save_clip_b32)):
            model = save(Path(tmp) / name.split()[0].replace("/", ""))
            options = BenchOptions(model, "cuda", args.precision, args.batch_size, args.images, parse_size(args.size),
                                   RunOptions(workers=args.workers))
            result = run_bench(options, Reporter(quiet=False))
            rows.append((name, result))
    print(f"\n{'model':22} {'prec':5} {'batch':>5} {'model-only img/s':>17} {'end-to-end img/s':>17} {'ratio':>6}  target")
    for name, r in rows:
        verdict = "met" if r.ratio >= TARGET_RATIO else "missed"
        print(f"{name:22} {r.precision:5} {r.batch_size:>5} {r.model_only_img_s:>17.1f} {r.end_to_end_img_s:>17.1f} "
              f"{r.ratio:>6.2f}  {verdict} (>= {TARGET_RATIO:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
