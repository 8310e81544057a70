"""Vision-language architectures at their published sizes with RANDOM weights, saved like the hub's.

The weights cannot be downloaded where the benchmarks were written; time per token and memory do not
depend on the weights' values, so each builder instantiates the published config's architecture, a
WordLevel tokenizer with the published vocabulary size (prompts tokenize to <unk>s, which costs the same),
and the processor the checkpoint ships (same image sizes, tiling and image-token counts), and saves both
with `save_pretrained`. `tiny=True` builds a few-kB version of the same classes so scripts can be checked
in seconds. Every builder returns the parameter count.

Configs (the transformers config classes' defaults differ from these checkpoints where noted):
- SmolVLM-256M/500M-Instruct: Idefics3, SigLIP-B/16 at 512 px, pixel shuffle 4 (64 tokens per 512-px
  view), SmolLM2-135M (576 wide, 30 layers, 9/3 heads, MLP 1536) or SmolLM2-360M (960, 32, 15/5, 2560),
  vocabulary 49280, untied output layer; images fitted into 2048 px and split into 512-px tiles + a global view.
- Florence-2-base: DaViT (`Florence2VisionConfig()` defaults: dims 128-1024, depths 1/1/9/1) at 768 px
  projected to 768, and a BART-base encoder-decoder (768 wide, 6+6 layers, 12 heads, FFN 3072, vocabulary
  51289 + the image placeholder): `Florence2Config()`'s own text default is BART-large, not base.
- BLIP-2 OPT-2.7b: `Blip2Config()`'s ViT-g/14 at 224 (1408 wide, 39 layers) and Q-Former (32 queries), with
  OPT-2.7B (2560 wide, 32 layers, 32 heads, FFN 10240, vocabulary 50272) instead of its default OPT-125m-size text.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for tests.tiny_vlm

from tests.tiny_vlm import SMOLVLM_TEMPLATE  # noqa: E402  SmolVLM-Instruct's own chat template, as the tests use it

SMOLVLM_SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<fake_token_around_image>", "<image>", "<end_of_utterance>",
                    "<global-img>", *[f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]]
PLAIN_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<image>"]  # BART/OPT order: bos 0, pad 1, eos 2
SMOLVLM_TEXT = {
    "256m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3),
    "500m": dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
                 num_key_value_heads=5),
}


def word_tokenizer(vocab_size: int, specials: list[str], image_token: str | None = None) -> Any:
    """A tokenizer with the checkpoint's vocabulary size: the specials first, then filler words."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {token: i for i, token in enumerate(specials)}
    words.update({f"w{i}": i for i in range(len(specials), vocab_size)})
    backend = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    extra = {"extra_special_tokens": {"image_token": image_token}} if image_token else {}
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", **extra)


def _save(model: Any, processor: Any, folder: Path, new_tokens: int) -> int:
    model.generation_config.min_new_tokens = new_tokens  # random weights never stop early: every run decodes as many
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def build_smolvlm(folder: Path, size: str = "256m", splitting: bool = True, new_tokens: int = 32,
                  tiny: bool = False) -> int:
    """SmolVLM-{size}-Instruct; `splitting=False` saves the processor with do_image_splitting off (one
    512-px view of 64 tokens per image instead of up to 4x4 tiles + a global view)."""
    import torch
    from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor,
                              Idefics3Processor, LlamaConfig)

    torch.manual_seed(0)
    vocab = 120 if tiny else 49280
    tokenizer = word_tokenizer(vocab, SMOLVLM_SPECIALS)
    shape = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2) if tiny else SMOLVLM_TEXT[size]
    text = LlamaConfig(vocab_size=vocab, max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
                       tie_word_embeddings=False, **shape)
    tile = 64 if tiny else 512
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                  image_size=tile, patch_size=8) if tiny else dict(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, image_size=tile,
        patch_size=16)
    config = Idefics3Config(vision_config=vision, text_config=text.to_dict(), scale_factor=4,
                            image_token_id=SMOLVLM_SPECIALS.index("<image>"), tie_word_embeddings=False)
    model = Idefics3ForConditionalGeneration(config).eval()
    image_processor = Idefics3ImageProcessor(size={"longest_edge": 4 * tile}, max_image_size={"longest_edge": tile},
                                             do_image_splitting=splitting)
    seq_len = (tile // vision["patch_size"]) ** 2 // 16
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=seq_len,
                                  chat_template=SMOLVLM_TEMPLATE)
    return _save(model, processor, folder, new_tokens)


def build_florence2_base(folder: Path, new_tokens: int = 32, tiny: bool = False) -> int:
    import torch
    from transformers import (BartConfig, CLIPImageProcessor, Florence2Config, Florence2ForConditionalGeneration,
                              Florence2Processor, Florence2VisionConfig)

    torch.manual_seed(0)
    vocab = 120 if tiny else 51289
    tokenizer = word_tokenizer(vocab + 1, PLAIN_SPECIALS, image_token="<image>")
    width = 32 if tiny else 768
    text = BartConfig(vocab_size=vocab + 1, d_model=width, encoder_layers=1 if tiny else 6,
                      decoder_layers=1 if tiny else 6, encoder_attention_heads=4 if tiny else 12,
                      decoder_attention_heads=4 if tiny else 12, encoder_ffn_dim=4 * width, decoder_ffn_dim=4 * width,
                      max_position_embeddings=1024)
    vision = Florence2VisionConfig(embed_dim=(8, 16, 32, 64), num_heads=(1, 2, 4, 8), num_groups=(1, 2, 4, 8),
                                   depths=(1, 1, 1, 1), window_size=2, projection_dim=width) if tiny else \
        Florence2VisionConfig(projection_dim=width)
    config = Florence2Config(vision_config=vision.to_dict(), text_config=text.to_dict(),
                             image_token_id=PLAIN_SPECIALS.index("<image>"))
    model = Florence2ForConditionalGeneration(config).eval()
    side = 128 if tiny else 768  # the DaViT's 32x downsampling: (side/32)^2 tokens + one pooled token
    image_processor = CLIPImageProcessor(size={"height": side, "width": side}, do_center_crop=False,
                                         image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    image_processor.image_seq_length = (side // 32) ** 2 + 1
    # The hub checkpoints' processors list a parser per task; captions need pure_text.
    parsers = {name: {} for name in ("pure_text", "description_with_bboxes", "bboxes", "polygons")}
    processor = Florence2Processor(image_processor=image_processor, tokenizer=tokenizer, post_processor_config=parsers)
    return _save(model, processor, folder, new_tokens)


def build_blip2_opt_2_7b(folder: Path, new_tokens: int = 32, tiny: bool = False) -> int:
    import torch
    from transformers import BlipImageProcessor, Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, OPTConfig

    torch.manual_seed(0)
    vocab = 120 if tiny else 50272
    # Blip2Processor registers "<image>" itself; it is in the vocabulary already, so it keeps its id.
    tokenizer = word_tokenizer(vocab, PLAIN_SPECIALS)
    text = OPTConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=1, ffn_dim=64, num_attention_heads=4,
                     word_embed_proj_dim=32) if tiny else OPTConfig(
        vocab_size=vocab, hidden_size=2560, num_hidden_layers=32, ffn_dim=10240, num_attention_heads=32,
        word_embed_proj_dim=2560, max_position_embeddings=2048)
    side = 32 if tiny else 224
    extra: dict[str, Any] = dict(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                           image_size=side, patch_size=8),
        qformer_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                            encoder_hidden_size=32),
        num_query_tokens=4) if tiny else {}
    config = Blip2Config(text_config=text.to_dict(), image_token_id=PLAIN_SPECIALS.index("<image>"), **extra)
    model = Blip2ForConditionalGeneration(config).eval()
    image_processor = BlipImageProcessor(size={"height": side, "width": side})
    processor = Blip2Processor(image_processor=image_processor, tokenizer=tokenizer,
                               num_query_tokens=config.num_query_tokens)
    return _save(model, processor, folder, new_tokens)
