"""CLIP image and text embeddings, unit length, for the index and for search queries."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import default_collate

from vitkit.models.backends.open_clip_ import OpenClipAssets, encode_images, encode_texts
from vitkit.inputs.data import ImagePreprocess, Sample
from vitkit.errors import UsageError
from vitkit.models.loading import LoadedModel
from vitkit.outputs.records import RecordLayout
from vitkit.runtime.runner import model_context

EMBED_LAYOUT = RecordLayout(
    csv_columns=("path", "width", "height", "error"),
    csv_rows=lambda record: [{k: record.get(k) for k in ("path", "width", "height", "error")}],
    describe=lambda record: f"{len(record.get('embedding', []))}-d embedding",
)


class EmbedTask:
    layout = EMBED_LAYOUT

    def __init__(self, model: LoadedModel) -> None:
        if not isinstance(model.assets, OpenClipAssets):
            raise UsageError(f"model {model.spec.id!r} is not an open_clip model")
        self.model = model
        self.preprocess = ImagePreprocess(model.assets.transform)
        self.collate_inputs = default_collate
        self.draft_size = model.draft_size

    @property
    def dim(self) -> int:
        return int(self.encode_texts(["a"]).shape[1])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return encode_images(self.model.module, images)  # (B, D), unit length

    def postprocess(self, vectors: torch.Tensor, samples: Sequence[Sample]) -> list[dict[str, Any]]:
        return [{"embedding": row} for row in vectors.float().cpu().numpy()]

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """list of N strings -> (N, D) float32 unit vectors."""
        with model_context(self.model):
            vectors = encode_texts(self.model.module, self.model.assets.tokenizer, texts, self.model.device)
        return vectors.float().cpu().numpy()
