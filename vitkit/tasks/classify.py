"""Image classification with a timm or transformers classifier: top-k labels with their probabilities.

The backend supplies the checkpoint's own preprocessing, class names and scoring (see
`models/backends/base.py: Classifier`); records have the same schema whichever library made the model.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch.utils.data import default_collate

from vitkit.errors import ModelTaskMismatchError, UsageError
from vitkit.inputs.data import ImagePreprocess, Sample
from vitkit.models.backends import get_backend
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
        make_classifier = getattr(get_backend(model.spec.backend), "classifier", None)
        if make_classifier is None:
            raise ModelTaskMismatchError(f"model {model.spec.id!r} ({model.spec.backend}) cannot classify",
                                         hint="pick a classify model from `vitkit models list --task classify`")
        if top_k < 1:
            raise UsageError(f"--top-k must be at least 1, not {top_k}")
        self.model = model
        self.classifier = make_classifier(model.module, model.assets)
        self.labels = self.classifier.labels
        self.top_k = min(top_k, len(self.labels))
        # the checkpoint's own preprocessing (timm's aspect-capped: backends/aspect.py; a transformers processor)
        self.preprocess = ImagePreprocess(self.classifier.preprocess)
        self.collate_inputs = self.classifier.collate_inputs or default_collate
        self.draft_size = model.draft_size

    def forward(self, inputs: Any) -> torch.Tensor:
        return self.classifier.scores(self.model.module, inputs)  # (B, num_classes)

    def postprocess(self, probabilities: torch.Tensor, samples: Sequence[Sample]) -> list[dict[str, Any]]:
        scores, class_ids = probabilities.topk(self.top_k, dim=-1)
        return [
            {"predictions": [
                {"label": self.labels[c], "class_id": c, "score": s}
                for c, s in zip(row_ids.tolist(), row_scores.tolist())
            ]}
            for row_scores, row_ids in zip(scores.cpu(), class_ids.cpu())
        ]
