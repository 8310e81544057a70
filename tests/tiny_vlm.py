"""Tiny random vision-language models saved with save_pretrained: a LLaVA (CLIP vision tower + Llama), an
Idefics3/SmolVLM (SigLIP-style tower + Llama) and a Qwen2-VL, each with a BPE tokenizer trained here and a chat
template; and a Florence-2 (DaViT + BART), which answers task tokens and has no chat template."""

from __future__ import annotations

from pathlib import Path

SENTENCES = ["Is there a cat in this image?", "What colour is the sky?", "USER: ASSISTANT: User: Assistant: yes no",
             "Describe this image in one sentence.", "Describe this image in detail.", "a photo of a dog on the grass",
             "A red rocket, a cup of coffee and an astronaut."]

# LLaVA-1.5's own conversation format, as its hub processor's template renders it.
LLAVA_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | upper }}: {% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% else %}{{ item['text'] }}{% endif %}{% endfor %}"
    "{{ eos_token if message['role'] == 'assistant' else '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}")
# SmolVLM-Instruct's template.
SMOLVLM_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")


def train_tokenizer(special_tokens: list[str], sentences: list[str] = SENTENCES, **named: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<unk>", "<s>", "</s>", "<pad>", *special_tokens],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(sentences, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", **named)


def text_config(vocab_size: int):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                       bos_token_id=1, eos_token_id=2, pad_token_id=3)


def sharpen(model) -> None:
    """Random tiny models spread probability almost evenly; larger output weights give clear argmaxes
    (ties would make greedy parity meaningless) and answers that differ between images. At the default
    init (std 0.02) attention barely moves the residual stream, so each answer hangs on the last token
    alone: an image or a padding token the attention mask fails to hide would change nothing. Louder
    language-model weights make every answer depend on what the model attends to."""
    import torch

    with torch.no_grad():
        model.get_output_embeddings().weight.normal_(0, 2.0)
        for name, weight in model.named_parameters():
            if weight.dim() != 2:
                continue
            if "projector" in name or "connector" in name:
                weight.normal_(0, 1.0)  # image features loud enough to change the answer
            elif "language_model" in name or "text_model" in name:
                weight.normal_(0, 0.3)


def build_tiny_llava(path: Path) -> Path:
    import torch
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration,
                              LlavaProcessor)

    torch.manual_seed(0)
    tokenizer = train_tokenizer(["<image>"], extra_special_tokens={"image_token": "<image>"})
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                              image_size=28, patch_size=14, projection_dim=16)
    config = LlavaConfig(vision_config=vision, text_config=text_config(len(tokenizer)),
                         image_token_index=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-1)
    model = LlavaForConditionalGeneration(config).eval()
    sharpen(model)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=LLAVA_TEMPLATE,
                               patch_size=14, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1)  # the CLS token
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def build_tiny_idefics3(path: Path) -> Path:
    """SmolVLM's architecture: images split into 28-pixel tiles (their count depends on the image's shape,
    so prompts differ in length and batches need padding) plus a global view."""
    import torch
    from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor,
                              Idefics3Processor)

    torch.manual_seed(0)
    tags = ["<global-img>"] + [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    tokenizer = train_tokenizer(["<fake_token_around_image>", "<image>", "<end_of_utterance>", *tags])
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28,
                  patch_size=14)
    config = Idefics3Config(vision_config=vision, text_config=text_config(len(tokenizer)).to_dict(), scale_factor=2,
                            image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
    model = Idefics3ForConditionalGeneration(config).eval()
    sharpen(model)
    image_processor = Idefics3ImageProcessor(size={"longest_edge": 56}, max_image_size={"longest_edge": 28})
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=1,
                                  chat_template=SMOLVLM_TEMPLATE)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


QWEN2VL_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ item['text'] }}"
    "{% endif %}{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_qwen2vl(path: Path) -> Path:
    """Qwen2-VL: its processor flattens every image's patches into one (N, D) tensor (image_grid_thw
    says whose), so a batch's dim 0 is not the image there."""
    import torch
    from transformers import (Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor,
                              Qwen2VLProcessor, Qwen2VLVideoProcessor)

    torch.manual_seed(0)
    tokenizer = train_tokenizer(["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
                                 "<|im_start|>", "<|im_end|>"],
                                extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"})
    ids = tokenizer.convert_tokens_to_ids
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                rope_scaling={"type": "mrope", "mrope_section": [2, 2, 4]}, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    vision = dict(depth=1, embed_dim=16, hidden_size=32, num_heads=2, patch_size=14, spatial_merge_size=2,
                  temporal_patch_size=2, mlp_ratio=2)
    config = Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=ids("<|image_pad|>"),
                           video_token_id=ids("<|video_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
                           vision_end_token_id=ids("<|vision_end|>"))
    model = Qwen2VLForConditionalGeneration(config).eval()
    sharpen(model)
    processor = Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112),
                                 video_processor=Qwen2VLVideoProcessor(), tokenizer=tokenizer,
                                 chat_template=QWEN2VL_TEMPLATE)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


FLORENCE_SENTENCES = ["What does the image describe?", "Describe in detail what is shown in the image.",
                      "Describe with a paragraph what is shown in the image.", "a cat on a red couch"]


def build_tiny_florence2(path: Path) -> Path:
    """Florence-2: a DaViT tower and a BART encoder-decoder that answers task tokens (<CAPTION>, ...), which
    its processor turns into its own prompts; no chat template. Two DaViT stages at 32 pixels: 4 x 4
    spatial tokens plus one temporal token. 48 positions hold the encoder's 17 image tokens and prompt,
    and keep random captions short."""
    import torch
    from transformers import (BartConfig, CLIPImageProcessor, Florence2Config, Florence2ForConditionalGeneration,
                              Florence2Processor, Florence2VisionConfig, GenerationConfig)

    torch.manual_seed(0)
    tokenizer = train_tokenizer(["<image>"], SENTENCES + FLORENCE_SENTENCES,
                                extra_special_tokens={"image_token": "<image>"})
    ids = dict(bos_token_id=1, eos_token_id=2, pad_token_id=3, decoder_start_token_id=2)
    text = BartConfig(vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1,
                      encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                      max_position_embeddings=48, forced_eos_token_id=2, **ids)
    vision = Florence2VisionConfig(depths=(1, 1), patch_size=(7, 3), patch_stride=(4, 2), patch_padding=(3, 1),
                                   patch_prenorm=(False, True), embed_dim=(16, 32), num_heads=(2, 4),
                                   num_groups=(2, 4), window_size=2, projection_dim=32, max_position_embeddings=8)
    config = Florence2Config(vision_config=vision, text_config=text,
                             image_token_id=tokenizer.convert_tokens_to_ids("<image>"))
    model = Florence2ForConditionalGeneration(config).eval()
    sharpen(model)
    with torch.no_grad():  # an encoder-decoder hears the image only through cross-attention: make it loud
        for name, weight in model.named_parameters():
            if "encoder_attn." in name and weight.dim() == 2:
                weight.normal_(0, 1.0)
        # A louder end token: captions end at different lengths, so a batch's shorter rows are padded.
        model.get_output_embeddings().weight[ids["eos_token_id"]] *= 1.6
    # The hub checkpoints' own generation settings (florence-community/Florence-2-base's generation_config).
    model.generation_config = GenerationConfig(num_beams=3, no_repeat_ngram_size=3, early_stopping=True,
                                               forced_bos_token_id=1, forced_eos_token_id=2, **ids)
    image_processor = CLIPImageProcessor(size={"height": 32, "width": 32}, do_center_crop=False,
                                         image_seq_length=17)
    # The parsers post_process_generation may use: the hub checkpoints list every task's; captions need pure_text.
    parsers = {name: {} for name in ("pure_text", "description_with_bboxes", "bboxes", "polygons")}
    processor = Florence2Processor(image_processor=image_processor, tokenizer=tokenizer, post_processor_config=parsers)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
