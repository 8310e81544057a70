"""`vitkit caption`'s default, CoCa ViT-B/32, against Florence-2-base's own captioning task, timed on this
CPU through `vitkit.caption` at their real sizes with RANDOM weights (none can be downloaded here).

Each captioner decodes a fixed number of tokens (random weights need not stop): CoCa's end-of-text logit
is held at zero so it is never chosen within --max-length; Florence-2 is saved with min_new_tokens. Each
setting runs in a child process (peak RSS is its own) over the same photos; the fastest of two passes
after a one-image warm-up is reported, with the ratio to CoCa's default (3 beams) from the same run.

    python benchmarks/caption_candidates.py [--tokens 24]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _vlm_architectures import build_florence2_base  # noqa: E402
from vlm_candidates import cpu_bf16_support, peak_rss_mib  # noqa: E402

PHOTOS = ["astronaut.jpg", "coffee.jpg"]
SETTINGS = {  # name -> (model folder, vitkit.caption options)
    "coca-b32 (3 beams)": ("coca", {}),
    "coca-b32 (greedy)": ("coca", {"greedy": True}),
    "florence-2-b <CAPTION> (3 beams)": ("florence", {"detail": "brief"}),
    "florence-2-b <CAPTION> (greedy)": ("florence", {"detail": "brief", "greedy": True}),
}


def build_coca(folder: Path) -> int:
    """coca_ViT-B-32 from open_clip's own config, random, in open_clip's local-dir layout."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    config = open_clip.get_model_config("coca_ViT-B-32")
    model = open_clip.CoCa(**{k: v for k, v in config.items() if k != "custom_text"})
    with torch.no_grad():
        projection = model.text_decoder.text_projection
        projection.normal_(0, 1.0)
        projection[:, open_clip.get_tokenizer("ViT-B-32").eot_token_id] = 0  # never the likeliest: full length
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": config}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return sum(p.numel() for p in model.parameters())


def measure(name: str, folder: str, tokens: int) -> dict:
    import vitkit

    kind, options = SETTINGS[name]
    photos = [str(REPO_ROOT / "sample_data" / photo) for photo in PHOTOS]
    # CoCa's --max-length counts the start token; Florence-2's counts new tokens
    length = tokens + 1 if kind == "coca" else tokens
    model = vitkit.load_model(folder, task="caption", device="cpu")

    def caption(paths: list[str]) -> list:
        records = list(vitkit.caption(paths, model=model, max_length=length, quiet=True, **options))
        assert all(r.ok for r in records), [r.error for r in records if not r.ok]
        return records

    caption(photos[:1])  # warm-up
    passes = []
    for _ in range(2):
        start = time.perf_counter()
        records = caption(photos)
        passes.append((time.perf_counter() - start) / len(photos))
    return {"setting": name, "tokens": tokens, "s_per_image": round(min(passes), 3),
            "s_per_image_each_pass": [round(p, 3) for p in passes],
            "caption_words": [len(r.caption.split()) for r in records], "peak_rss_mib": round(peak_rss_mib())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=24, help="tokens each caption decodes")
    parser.add_argument("--child", nargs=2, metavar=("SETTING", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1], args.tokens)))
        return
    import os

    print(f"machine: {os.cpu_count()} cpus, native bf16: {cpu_bf16_support()}; load {os.getloadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="vitkit-captioners-") as scratch:
        folders = {"coca": Path(scratch) / "coca", "florence": Path(scratch) / "florence"}
        params = {"coca": build_coca(folders["coca"]),
                  "florence": build_florence2_base(folders["florence"], new_tokens=args.tokens)}
        results = []
        for name, (kind, _) in SETTINGS.items():
            command = [sys.executable, __file__, "--child", name, str(folders[kind]), "--tokens", str(args.tokens)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
            output = done.stdout.strip().splitlines()
            results.append({**json.loads(output[-1]), "params_m": round(params[kind] / 1e6, 1)})
            print(json.dumps(results[-1]), flush=True)
    base = results[0]["s_per_image"]
    print("\n| setting | params (M) | s/image | ratio vs CoCa 3 beams | peak RSS MiB |\n|---|---|---|---|---|")
    for r in results:
        print(f"| {r['setting']} | {r['params_m']} | {r['s_per_image']} | {r['s_per_image'] / base:.2f} | {r['peak_rss_mib']} |")
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
