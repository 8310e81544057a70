"""Tiny randomly-initialised models with real-size heads, saved in each library's own format, for benchmarks.

The backbones are tiny, so the model itself weighs little; what the memory benchmark measures is then
what vitkit does around it. The parts that scale with the image or the head are real size: class and
query counts, processor input sizes (as in the catalogue models' processor configs), prompt counts.
Built as tests/conftest.py builds its fixtures, loaded by vitkit's own loader as a local model folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch

ADE20K_CLASSES = 150  # segformer-b0 (nvidia/segformer-b0-finetuned-ade-512-512)
COCO_PANOPTIC_CLASSES = 133  # mask2former-swin-t (facebook/mask2former-swin-tiny-coco-panoptic)
COCO_DETECTION_CLASSES = 91  # detr-r50 (facebook/detr-resnet-50); its id2label has 91 entries
IMAGENET_CLASSES = 1000
QUERIES = 100  # Mask2Former and DETR COCO checkpoints


def _labels(count: int) -> tuple[dict[int, str], dict[str, int]]:
    id2label = {i: f"class_{i}" for i in range(count)}
    return id2label, {v: k for k, v in id2label.items()}


def segformer_ade(path: Path) -> Path:
    """SegFormer with ADE20K's 150 classes; its processor resizes to 512 x 512 as segformer-b0's does,
    so the logits are 150 x 128 x 128."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    id2label, label2id = _labels(ADE20K_CLASSES)
    config = SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[8, 4], hidden_sizes=[16, 32],
                             patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 1], mlp_ratios=[2, 2],
                             decoder_hidden_size=32, num_labels=ADE20K_CLASSES, id2label=id2label, label2id=label2id)
    SegformerForSemanticSegmentation(config).save_pretrained(path)
    SegformerImageProcessor(size={"height": 512, "width": 512}).save_pretrained(path)
    return path


def mask2former_coco(path: Path) -> Path:
    """Mask2Former with 100 queries and COCO panoptic's 133 classes; shortest edge 384 as the COCO
    checkpoints' processors, so a 4:3 photo runs at 384 x 512 and masks come out at 96 x 128 per query."""
    from transformers import (Mask2FormerConfig, Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessor,
                              SwinConfig)

    id2label, label2id = _labels(COCO_PANOPTIC_CLASSES)
    backbone = SwinConfig(image_size=384, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                          window_size=4, out_features=["stage1", "stage2", "stage3", "stage4"])
    config = Mask2FormerConfig(backbone_config=backbone, use_pretrained_backbone=False, feature_size=32,
                               mask_feature_size=32, hidden_dim=32, encoder_feedforward_dim=64, dim_feedforward=64,
                               encoder_layers=1, decoder_layers=2, num_attention_heads=2, num_queries=QUERIES,
                               common_stride=4, num_labels=COCO_PANOPTIC_CLASSES, id2label=id2label, label2id=label2id)
    model = Mask2FormerForUniversalSegmentation(config)
    with torch.no_grad():
        # Random heads give no confident queries; wider ones make real segments, as a trained model does.
        model.class_predictor.weight.normal_(0, 1.0)
        model.model.pixel_level_module.decoder.mask_projection.weight.normal_(0, 1.0)
    model.save_pretrained(path)
    Mask2FormerImageProcessor(size={"shortest_edge": 384, "longest_edge": 1333}).save_pretrained(path)
    return path


def _byte_level_vocab() -> dict[str, int]:
    """CLIP's byte-to-unicode alphabet, each symbol alone and word-final: a BPE vocabulary with no merges."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols = [chr(b) for b in printable] + [chr(256 + i) for i in range(256 - len(printable))]
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}


def clipseg(path: Path) -> Path:
    """CLIPSeg at 352 x 352 with 16 px patches, as CIDAS/clipseg-rd64-refined: masks are 352 x 352 per prompt."""
    from transformers import (CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegProcessor, CLIPTokenizer,
                              ViTImageProcessor)

    vocab = _byte_level_vocab()
    text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=77, bos_token_id=len(vocab) - 2,
                eos_token_id=len(vocab) - 1, pad_token_id=len(vocab) - 1)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=352,
                  patch_size=16)
    config = CLIPSegConfig(text_config=text, vision_config=vision, projection_dim=16, extract_layers=[0, 1],
                           reduce_dim=16, decoder_num_attention_heads=2, decoder_intermediate_size=32)
    CLIPSegForImageSegmentation(config).save_pretrained(path)
    processor = CLIPSegProcessor(image_processor=ViTImageProcessor(size={"height": 352, "width": 352}),
                                 tokenizer=CLIPTokenizer(vocab=vocab, merges=[]))
    processor.save_pretrained(path)
    return path


def detr_coco(path: Path) -> Path:
    """DETR with 100 queries and 91 COCO classes; a tiny ResNet backbone, and detr-resnet-50's processor
    size (shortest edge 800, longest 1333)."""
    from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor, ResNetConfig

    id2label, label2id = _labels(COCO_DETECTION_CLASSES)
    backbone = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], layer_type="basic",
                            out_features=["stage4"])
    config = DetrConfig(use_timm_backbone=False, backbone_config=backbone, use_pretrained_backbone=False, d_model=32,
                        encoder_layers=1, decoder_layers=1, encoder_ffn_dim=64, decoder_ffn_dim=64,
                        encoder_attention_heads=2, decoder_attention_heads=2, num_queries=QUERIES,
                        num_labels=COCO_DETECTION_CLASSES, id2label=id2label, label2id=label2id)
    model = DetrForObjectDetection(config)
    with torch.no_grad():
        # Spread the random queries' boxes and scores so some pass the threshold and get drawn.
        model.bbox_predictor.layers[-1].weight.normal_(0, 0.5)
        model.class_labels_classifier.weight.normal_(0, 2.0)
    model.save_pretrained(path)
    DetrImageProcessor(size={"shortest_edge": 800, "longest_edge": 1333}).save_pretrained(path)
    return path


def vitmae(path: Path) -> Path:
    """ViTMAE (with decoder) at 224 px with 16 px patches, as facebook/vit-mae-large."""
    from transformers import ViTImageProcessor, ViTMAEConfig, ViTMAEForPreTraining

    config = ViTMAEConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                          image_size=224, patch_size=16, decoder_hidden_size=32, decoder_num_hidden_layers=1,
                          decoder_num_attention_heads=2, decoder_intermediate_size=64, norm_pix_loss=True)
    ViTMAEForPreTraining(config).save_pretrained(path)
    ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(path)
    return path


COCA_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 1, "width": 32, "head_width": 16, "patch_size": 32,
                   "attentional_pool": True, "attn_pooler_heads": 2, "attn_pooler_queries": 8, "output_tokens": True},
    "text_cfg": {"context_length": 76, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1,
                 "embed_cls": True, "output_tokens": True},
    "multimodal_cfg": {"context_length": 76, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1,
                       "attn_pooler_heads": 2},
    "custom_text": True,  # with multimodal_cfg, makes open_clip build a CoCa
}


def coca(path: Path) -> Path:
    """CoCa at 224 px with 32 px patches and CLIP's 49408-token vocabulary, as coca_ViT-B-32, in
    open_clip's local-dir layout."""
    import open_clip
    from safetensors.torch import save_file

    model = open_clip.CoCa(**{k: v for k, v in COCA_CONFIG.items() if k != "custom_text"})
    with torch.no_grad():
        # open_clip leaves the vocabulary projection uninitialised (all logits 0); random values give
        # distinct tokens, and a larger end-of-text column lets captions end before the length limit.
        projection = model.text_decoder.text_projection
        projection.normal_(0, 1.0)
        projection[:, open_clip.get_tokenizer("ViT-B-32").eot_token_id] *= 4
    path.mkdir(parents=True, exist_ok=True)
    (path / "open_clip_config.json").write_text(json.dumps({"model_cfg": COCA_CONFIG}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "open_clip_model.safetensors"))
    return path


def timm_vit(path: Path) -> Path:
    """A 2-block ViT at 224 px with ImageNet's 1000 classes, saved by timm's save_for_hf."""
    import timm
    from timm.models import save_for_hf

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=IMAGENET_CLASSES,
                              depth=2, embed_dim=64, num_heads=2)
    save_for_hf(model, str(path), safe_serialization=True)
    return path


BUILDERS: dict[str, Callable[[Path], Path]] = {
    "segformer-ade": segformer_ade,
    "mask2former-coco": mask2former_coco,
    "clipseg": clipseg,
    "detr-coco": detr_coco,
    "vitmae": vitmae,
    "coca": coca,
    "timm-vit": timm_vit,
}


def build(name: str, folder: Path, seed: int = 0) -> Path:
    """The model `name`, seeded, saved under folder/name."""
    torch.manual_seed(seed)
    return BUILDERS[name](folder / name)
