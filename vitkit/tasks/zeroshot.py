"""CLIP zero-shot labelling: label embeddings built once per run from prompt-template ensembles."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import default_collate

from vitkit.models.backends.open_clip_ import (OpenClipAssets, build_text_classifier, encode_images, imagenet_templates,
                                              logit_scale_and_bias)
from vitkit.inputs.data import ImagePreprocess, Sample
from vitkit.errors import UsageError
from vitkit.models.loading import LoadedModel
from vitkit.outputs.records import RecordLayout, explode_rows
from vitkit.runtime.runner import model_context

# Built-in ensembles, as format strings so they can be shown and saved. imagenet7 is the 7-prompt
# subset the CLIP authors selected for ImageNet (open_clip's SIMPLE_IMAGENET_TEMPLATES); imagenet80
# is their full set (OPENAI_IMAGENET_TEMPLATES): slightly better, 11x more text to encode.
BUILTIN_TEMPLATE_SETS = ("imagenet7", "imagenet80", "none")
DEFAULT_TEMPLATE_SET = "imagenet7"
DEFAULT_CLIP_THRESHOLD = 0.25  # cosine similarity; CLIP image-text cosines of a good match sit around 0.25-0.35
DEFAULT_SIGMOID_THRESHOLD = 0.5


def get_builtin_templates(name: str) -> list[str]:
    return ["{}"] if name == "none" else imagenet_templates(full=name == "imagenet80")


def resolve_templates(templates: Sequence[str] | None, templates_source: str | None) -> list[str]:
    """--template strings, else --templates (a built-in set name or a file, one template a line)."""
    if templates and templates_source:
        raise UsageError("--template and --templates cannot be combined", hint="use one or the other")
    if templates:
        result = list(templates)
    elif templates_source is None or templates_source in BUILTIN_TEMPLATE_SETS:
        return get_builtin_templates(templates_source or DEFAULT_TEMPLATE_SET)
    elif not Path(templates_source).is_file():
        raise UsageError(f"--templates {templates_source}: not a built-in template set and not a file",
                         hint=f"built-in sets: {', '.join(BUILTIN_TEMPLATE_SETS)}; or a file with one template a line")
    else:
        result = _read_lines(templates_source, "--templates")
    for template in result:
        if template.count("{}") != 1:
            raise UsageError(f"template {template!r} must contain {{}} exactly once", hint="e.g. 'a photo of a {}.'")
    return result


def resolve_labels(labels: str | None, labels_file: str | None) -> list[str]:
    if bool(labels) == bool(labels_file):
        raise UsageError("give the labels with --labels 'cat,dog' or --labels-file FILE (one of them)")
    names = [n.strip() for n in labels.split(",")] if labels else _read_lines(labels_file or "", "--labels-file")
    names = [n for n in names if n]
    if not names:
        raise UsageError("no labels given", hint="--labels 'cat,dog,car'")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UsageError(f"labels repeated: {', '.join(duplicates)}")
    return names


def _read_lines(path: str, flag: str) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read {flag} file {path}: {exc.strerror or exc}") from exc
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _describe(record: dict[str, Any]) -> str:
    return ", ".join(f"{p['label']} {p['score']:.2f}" for p in record.get("predictions", [])) or "(no label above threshold)"


LABEL_LAYOUT = RecordLayout(
    csv_columns=("path", "width", "height", "rank", "label", "score", "error"),
    csv_rows=explode_rows("predictions", ("label", "score")),
    describe=_describe,
    table_items="predictions",
)


class ZeroShotTask:
    layout = LABEL_LAYOUT

    def __init__(self, model: LoadedModel, labels: Sequence[str], templates: Sequence[str], top_k: int = 5,
                 multi_label: bool = False, threshold: float | None = None) -> None:
        if not isinstance(model.assets, OpenClipAssets):
            raise UsageError(f"model {model.spec.id!r} is not an open_clip model")
        if len(labels) == 1 and not multi_label:
            # A softmax over one label is 1.0 for every image, whatever it shows.
            raise UsageError(f"one label ({labels[0]!r}) scores 1.0 on every image when labels compete (softmax)",
                             hint=f"add --multi-label to score each image against it on its own, or give a "
                                  f"second label, e.g. --labels '{labels[0]},something else'")
        self.model = model
        self.labels = list(labels)
        self.top_k = min(top_k, len(self.labels))
        self.multi_label = multi_label
        self.preprocess = ImagePreprocess(model.assets.transform)
        self.collate_inputs = default_collate
        self.draft_size = model.draft_size
        self.logit_scale, self.logit_bias = logit_scale_and_bias(model.module)
        # SigLIP-type models are trained with a sigmoid over (scale * cos + bias), so their independent
        # scores are probabilities; CLIP's are not, and its cosine similarity is the honest score.
        self.uses_sigmoid = self.logit_bias is not None
        default = DEFAULT_SIGMOID_THRESHOLD if self.uses_sigmoid else DEFAULT_CLIP_THRESHOLD
        self.threshold = default if threshold is None else threshold
        self.classifier = self._build_classifier(templates)  # (D, C)

    def _build_classifier(self, templates: Sequence[str]) -> torch.Tensor:
        with model_context(self.model):
            return build_text_classifier(self.model.module, self.model.assets.tokenizer, self.labels, templates,
                                         self.model.device)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        cosine = encode_images(self.model.module, images) @ self.classifier  # (B, C)
        logits = self.logit_scale * cosine + (self.logit_bias or 0.0)
        if not self.multi_label:
            return logits.softmax(dim=-1)
        return logits.sigmoid() if self.uses_sigmoid else cosine

    def postprocess(self, scores: torch.Tensor, samples: Sequence[Sample]) -> list[dict[str, Any]]:
        records = []
        for row in scores.float().cpu():
            order = row.argsort(descending=True).tolist()
            if self.multi_label:
                chosen = [i for i in order if row[i] >= self.threshold]
            else:
                chosen = order[: self.top_k]
            records.append({"predictions": [{"label": self.labels[i], "score": float(row[i])} for i in chosen]})
        return records
