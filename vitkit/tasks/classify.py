"""Image classification with a timm model: top-k labels with softmax probabilities."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from vitkit.models.backends.timm_ import TimmAssets, resize_size
from vitkit.inputs.data import Sample
from vitkit.errors import UsageError
from vitkit.models.loading import LoadedModel
from vitkit.outputs.records import RecordLayout, explode_rows


def _describe(record: dict[str, Any]) -> str:
    return ", ".join(f"{p['label']} {p['score']:.2f}" for p in record.get("predictions", []))


CLASSIFY_LAYOUT = RecordLayout(
    csv_columns=("path", "width", "height", "rank", "label", "class_id", "score", "error"),
    csv_rows=explode_rows("predictions", ("label", "class_id", "score")),
    describe=_describe,
    table_items="predictions",
)


class ClassifyTask:
    layout = CLASSIFY_LAYOUT

    def __init__(self, model: LoadedModel, top_k: int = 5) -> None:
        if not isinstance(model.assets, TimmAssets):
            raise UsageError(f"model {model.spec.id!r} is not a timm classifier")
        if top_k < 1:
            raise UsageError(f"--top-k must be at least 1, not {top_k}")
        self.model = model
        self.labels = model.assets.labels
        self.top_k = min(top_k, len(self.labels))
        self.preprocess = model.assets.transform  # timm's own eval transform (aspect-capped: backends/aspect.py)
        self.draft_size = resize_size(model.assets.data_config)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.model.module(images)  # (B, num_classes)
        return logits.float().softmax(dim=-1)

    def postprocess(self, probabilities: torch.Tensor, samples: Sequence[Sample]) -> list[dict[str, Any]]:
        scores, class_ids = probabilities.topk(self.top_k, dim=-1)
        return [
            {"predictions": [
                {"label": self.labels[c], "class_id": c, "score": s}
                for c, s in zip(row_ids.tolist(), row_scores.tolist())
            ]}
            for row_scores, row_ids in zip(scores.cpu(), class_ids.cpu())
        ]
