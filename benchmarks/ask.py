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

TEMPLATE = ("<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
            "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
            "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
            "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
            "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")
VOCAB = 49280
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<fake_token_around_image>", "<image>", "<end_of_utterance>",
            "<global-img>", *[f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]]


def build_smolvlm_256m(path: Path, new_tokens: int) -> int:
    """SmolVLM-256M-Instruct's architecture with random weights, saved like the hub's; returns its parameter count."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor,
                              Idefics3Processor, LlamaConfig, PreTrainedTokenizerFast)

    torch.manual_seed(0)
    words = {token: i for i, token in enumerate(SPECIALS)}
    words.update({f"w{i}": i for i in range(len(SPECIALS), VOCAB)})
    backend = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>",
                                        eos_token="</s>", pad_token="<pad>")
    text = LlamaConfig(vocab_size=VOCAB, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                       num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                       rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=False)
    vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  image_size=512, patch_size=16)
    config = Idefics3Config(vision_config=vision, text_config=text.to_dict(), scale_factor=4,
                            image_token_id=words["<image>"], tie_word_embeddings=False)
    model = Idefics3ForConditionalGeneration(config).eval()
    model.generation_config.min_new_tokens = new_tokens  # never stops early, so every run decodes as many
    image_processor = Idefics3ImageProcessor(size={"longest_edge": 2048}, max_image_size={"longest_edge": 512})
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=64,
                                  chat_template=TEMPLATE)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


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
        params = build_smolvlm_256m(folder, args.new_tokens)
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
