"""transformers open-vocabulary detectors (OWL-ViT, OWLv2, Grounding DINO): text prompts in, boxes out.

Each family keeps its own conventions here, next to its processor:
- OWL: one text query per name, tokenised once per run. OWLv2's processor pads every image to a square
  (bottom/right) before resizing, so its boxes are fractions of that square: they are scaled with
  `target_sizes` = (max(h, w), max(h, w)), never (h, w), or a 4:1 image's boxes come out squashed.
  OWL-ViT stretches the image to its square input, so its boxes are fractions of the image itself.
- Grounding DINO: every name joined into one lower-cased caption "a. b. c." (the processor's own
  format), tokenised once per run; each box's name is the one whose tokens score highest.
OWL's text embeddings are computed once per run (per device) and every batch runs only the image
tower and the heads, the steps of the model's own forward with the text part taken out. Grounding
DINO fuses text and image in its encoder, so its text tower runs with every batch.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Sequence

import torch
from torchvision.ops import box_iou

from vitkit.errors import UsageError

OWL, GROUNDING_DINO = "owl", "grounding-dino"
_FAMILY_BY_MODEL_TYPE = {"owlvit": OWL, "owlv2": OWL, "grounding-dino": GROUNDING_DINO}
# Box score thresholds when --threshold is not given: the values the families' processors and model
# cards use (OWL's post-processing default 0.1; Grounding DINO's box threshold 0.3 from its README).
DEFAULT_THRESHOLDS = {OWL: 0.1, GROUNDING_DINO: 0.3}
# Grounding DINO: a box is kept only if some prompt's token scores above this (its README's 0.25), the
# tokens the processor's own `text_labels` are read from; a box only the separators or [CLS] claim is dropped.
TEXT_THRESHOLD = 0.25
SYNONYM_SEPARATOR = "|"
# Boxes overlapping at least this much (IoU) are one object: negatives suppress them, synonyms merge.
SAME_OBJECT_IOU = 0.5


def needs_prompts(module: Any) -> bool:
    """A detector that takes text (its forward has `input_ids`) detects what it is told to."""
    return "input_ids" in inspect.signature(module.forward).parameters


def family_of(config: Any, model_id: str) -> str:
    family = _FAMILY_BY_MODEL_TYPE.get(getattr(config, "model_type", ""))
    if family is None:
        raise UsageError(f"model {model_id!r} ({getattr(config, 'model_type', '?')}) takes text, but vitkit does "
                         "not know how to prompt it", hint="use an OWL-ViT, OWLv2 or Grounding DINO checkpoint, "
                                                           "e.g. --model owlv2-b")
    return family


@dataclass(frozen=True)
class Prompts:
    labels: tuple[str, ...]  # one per positive prompt: its first name; class_id is the index
    names: tuple[str, ...]  # every name sent to the model: the prompts' names, then the negatives
    owner: tuple[int, ...]  # per name: the index of its prompt, -1 for a negative
    synonyms: frozenset[int]  # prompts given with more than one name


def parse_prompts(prompts: Sequence[str], negatives: Sequence[str] = ()) -> Prompts:
    labels: list[str] = []
    names: list[str] = []
    owner: list[int] = []
    synonyms = set()
    for index, prompt in enumerate(prompts):
        parts = [part.strip() for part in prompt.split(SYNONYM_SEPARATOR)]
        if not all(parts):
            raise UsageError(f"prompt {prompt!r} has an empty name", hint='give names like "car|automobile"')
        labels.append(parts[0])
        names.extend(parts)
        owner.extend([index] * len(parts))
        if len(parts) > 1:
            synonyms.add(index)
    for negative in negatives:
        if not negative.strip():
            raise UsageError("--negative is empty", hint='give a thing not to detect, e.g. --negative "toy car"')
        names.append(negative.strip())
        owner.append(-1)
    if not labels:
        raise UsageError("no prompt given", hint='name what to find: --prompt "red car" --prompt person')
    if len(set(names)) != len(names):
        raise UsageError("a name is given twice among the prompts and negatives",
                         hint="give each name once; synonyms go in one prompt as \"car|automobile\"")
    return Prompts(tuple(labels), tuple(names), tuple(owner), frozenset(synonyms))


@dataclass(frozen=True)
class Candidate:
    name: int  # index into Prompts.names
    score: float
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in displayed-image pixels


class OpenVocabularyFamily:
    """The text inputs of one run and the processor's own post-processing, for one model family."""

    def __init__(self, family: str, processor: Any, names: Sequence[str], threshold: float) -> None:
        self.family = family
        self.processor = processor
        self.threshold = threshold
        # OWLv2 pads to a square (`do_pad`); OWL-ViT stretches the image to its square input instead.
        self.pads_to_square = family == OWL and bool(getattr(processor.image_processor, "do_pad", False))
        if family == OWL:
            self.text = dict(processor(text=[list(names)], return_tensors="pt"))  # (Q, L) each
            self.spans: list[tuple[int, int]] = []
        else:
            if any("." in name for name in names):
                raise UsageError("Grounding DINO prompts cannot contain '.', its separator between names",
                                 hint="leave the full stop out")
            caption, char_spans = grounding_caption(names)
            self.text = dict(processor(text=caption, return_tensors="pt"))  # (1, L) each
            offsets = processor.tokenizer(caption, return_offsets_mapping=True)["offset_mapping"]
            self.spans = token_spans(offsets, char_spans)

    def check_length(self, config: Any) -> None:
        """Prompts longer than the text tower takes would fail inside the model, mid-run; say so now."""
        text_config = getattr(config, "text_config", None)
        limit = (getattr(text_config, "max_position_embeddings", None) if self.family == OWL
                 else getattr(config, "max_text_len", None))
        length = int(self.text["input_ids"].shape[-1])
        if limit and length > int(limit):
            what = "the longest prompt" if self.family == OWL else "all prompts together"
            raise UsageError(f"{what} is {length} tokens; this model reads at most {limit}",
                             hint="shorten the prompts" + ("" if self.family == OWL else ", or run fewer at a time"))

    def detect(self, module: Any, inputs: dict[str, torch.Tensor]) -> Any:
        """The model's outputs (logits, pred_boxes) for a batch of processed images."""
        pixels = inputs["pixel_values"]
        if self.family == OWL:
            return owl_outputs(module, pixels, self._owl_queries(module, pixels.device))
        text = {key: value.to(pixels.device) for key, value in self.text.items()}  # (1, L) each
        if pixels.shape[0] == 1 or "pixel_mask" not in inputs:
            return module(**inputs, **{key: value.repeat(pixels.shape[0], 1) for key, value in text.items()})
        # Its backbone (Swin) sees a padded batch's padding, so each image runs alone at its own size:
        # an image's boxes never depend on the images it shares a batch with.
        single = []
        for pixel_values, mask in zip(pixels, inputs["pixel_mask"]):  # (3, H, W), (H, W)
            height, width = int(mask.any(dim=1).sum()), int(mask.any(dim=0).sum())
            single.append(module(pixel_values=pixel_values[None, :, :height, :width],
                                 pixel_mask=mask[None, :height, :width], **text))
        return type(single[0])(logits=torch.cat([o.logits for o in single]),
                               pred_boxes=torch.cat([o.pred_boxes for o in single]))

    def _owl_queries(self, module: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q, D) unit-length text embeddings and (Q,) which queries are real, computed once per device."""
        cached = getattr(self, "_queries", None)
        if cached is None or cached[0].device != device:
            input_ids, attention_mask = self.text["input_ids"].to(device), self.text["attention_mask"].to(device)
            clip_model = getattr(module, "owlv2", None) or module.owlvit
            pooled = clip_model.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
            embeds = clip_model.text_projection(pooled)
            # As the model's forward: normalised, and a query whose first token is 0 is padding.
            cached = (embeds / torch.linalg.norm(embeds, ord=2, dim=-1, keepdim=True), input_ids[:, 0] > 0)
            self._queries = cached
        return cached

    def candidates(self, outputs: Any, sizes: Sequence[tuple[int, int]]) -> list[list[Candidate]]:
        """Per image, the boxes above the threshold from the processor's post-processing; `sizes` are
        the displayed images' (H, W)."""
        outputs.logits, outputs.pred_boxes = outputs.logits.float().cpu(), outputs.pred_boxes.float().cpu()
        if self.family == OWL:
            if self.pads_to_square:
                sizes = [(max(h, w), max(h, w)) for h, w in sizes]
            results = self.processor.post_process_grounded_object_detection(
                outputs, threshold=self.threshold, target_sizes=list(sizes))
            return [[Candidate(int(n), float(s), tuple(b)) for s, n, b in
                     zip(r["scores"].tolist(), r["labels"].tolist(), r["boxes"].tolist())] for r in results]
        input_ids = self.text["input_ids"].repeat(len(sizes), 1)
        results = self.processor.post_process_grounded_object_detection(
            outputs, input_ids=input_ids, threshold=self.threshold, text_threshold=TEXT_THRESHOLD,
            target_sizes=list(sizes))
        probabilities = outputs.logits.sigmoid()  # (B, queries, tokens)
        found = []
        for result, image_probabilities in zip(results, probabilities):
            # The processor keeps queries whose best token beats the threshold, in query order.
            kept = image_probabilities[image_probabilities.max(dim=-1).values > self.threshold]
            by_name = torch.stack([kept[:, start:end].max(dim=-1).values for start, end in self.spans], dim=-1)
            best_score, best_name = by_name.max(dim=-1)
            found.append([Candidate(int(n), float(s), tuple(b)) for s, n, b, name_score in
                          zip(result["scores"].tolist(), best_name.tolist(), result["boxes"].tolist(),
                              best_score.tolist()) if name_score > TEXT_THRESHOLD])
        return found


def owl_outputs(module: Any, pixel_values: torch.Tensor, queries: tuple[torch.Tensor, torch.Tensor]) -> Any:
    """OWL-ViT / OWLv2 forward (transformers' `...ForObjectDetection.forward`) with given text embeddings."""
    feature_map, _ = module.image_embedder(pixel_values=pixel_values)  # (B, h, w, D)
    batch, height, width, channels = feature_map.shape
    image_feats = feature_map.reshape(batch, height * width, channels)
    embeds, real = queries
    logits, _ = module.class_predictor(image_feats, embeds[None].expand(batch, -1, -1), real[None].expand(batch, -1))
    return SimpleNamespace(logits=logits, pred_boxes=module.box_predictor(image_feats, feature_map))


def grounding_caption(names: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """The processor's caption format ("a cat. a dog.", lower case) and each name's characters in it."""
    caption, spans = "", []
    for name in names:
        start = len(caption)
        caption += name.strip().lower()
        spans.append((start, len(caption)))
        caption += ". "
    return caption.rstrip(" "), spans


def token_spans(offsets: Sequence[tuple[int, int]], char_spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Each name's tokens as [start, end) token indices, from the tokenizer's character offsets."""
    spans = []
    for start, end in char_spans:
        inside = [i for i, (a, b) in enumerate(offsets) if b > a and a >= start and b <= end]
        if not inside:
            raise UsageError(f"a prompt tokenises to nothing for this model's tokenizer ({start}:{end})")
        spans.append((inside[0], inside[-1] + 1))
    return spans


def resolve(candidates: Sequence[Candidate], prompts: Prompts) -> list[tuple[int, Candidate]]:
    """(prompt index, candidate) for the boxes a record keeps: negatives' boxes are dropped and take with
    them every positive box overlapping them at SAME_OBJECT_IOU; within a prompt with synonyms, greedy
    NMS at SAME_OBJECT_IOU keeps one box per object (the highest-scoring). Prompts without synonyms keep
    the processor's boxes as they are."""
    positives = [c for c in candidates if prompts.owner[c.name] >= 0]
    negatives = [c for c in candidates if prompts.owner[c.name] < 0]
    if positives and negatives:
        overlap = box_iou(torch.tensor([c.box for c in positives]), torch.tensor([c.box for c in negatives]))
        positives = [c for c, row in zip(positives, overlap) if not bool((row >= SAME_OBJECT_IOU).any())]
    kept: list[tuple[int, Candidate]] = []
    for prompt in range(len(prompts.labels)):
        own = sorted((c for c in positives if prompts.owner[c.name] == prompt), key=lambda c: -c.score)
        if prompt in prompts.synonyms and len(own) > 1:
            overlap = box_iou(torch.tensor([c.box for c in own]), torch.tensor([c.box for c in own]))
            chosen: list[int] = []
            for index in range(len(own)):
                if all(float(overlap[index, other]) < SAME_OBJECT_IOU for other in chosen):
                    chosen.append(index)
            own = [own[index] for index in chosen]
        kept.extend((prompt, c) for c in own)
    return kept
