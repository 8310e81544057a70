"""Image embeddings: any timm or open_clip model's pooled vector (`embed`), and CLIP's image and text
vectors in one space (the index and search queries)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import default_collate

from vitkit.errors import ModelTaskMismatchError, UsageError
from vitkit.inputs.data import ImagePreprocess, Sample
from vitkit.models.backends import get_backend
from vitkit.models.backends.open_clip_ import OpenClipAssets, encode_images, encode_texts
from vitkit.models.loading import LoadedModel
from vitkit.outputs.records import RecordLayout, flat_rows
from vitkit.runtime.runner import model_context


def _describe(record: dict[str, Any]) -> str:
    if "row" in record:
        return f"row {record['row']}"
    return f"{len(record.get('embedding', []))}-d embedding"


_CSV_COLUMNS = ("path", "width", "height", "row", "error")
EMBED_LAYOUT = RecordLayout(
    csv_columns=_CSV_COLUMNS,
    csv_rows=flat_rows(_CSV_COLUMNS),
    describe=_describe,
)


class ImageEmbedTask:
    """`embed`: the model's own pooled image vector (timm `forward_head(forward_features(x), pre_logits=True)`,
    open_clip `encode_image`) on the checkpoint's own preprocessing; unit length unless `raw`."""

    layout = EMBED_LAYOUT

    def __init__(self, model: LoadedModel, raw: bool = False) -> None:
        make_embedder = getattr(get_backend(model.spec.backend), "image_embedder", None)
        if make_embedder is None:
            raise ModelTaskMismatchError(f"model {model.spec.id!r} ({model.spec.backend}) cannot embed images",
                                         hint="pick a timm or open_clip model: `vitkit models list --task embed`")
        self.model, self.raw = model, raw
        self.embedder = make_embedder(model.module, model.assets)
        self.dim = self.embedder.dim
        self.preprocess = ImagePreprocess(self.embedder.preprocess)
        self.collate_inputs = default_collate
        self.draft_size = model.draft_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        vectors = self.embedder.vectors(self.model.module, images).float()  # (B, dim)
        return vectors if self.raw else torch.nn.functional.normalize(vectors, dim=-1)

    def postprocess(self, vectors: torch.Tensor, samples: Sequence[Sample]) -> list[dict[str, Any]]:
        return [{"embedding": row} for row in vectors.float().cpu().numpy()]


class EmbedTask:
    """CLIP image vectors that text queries can be compared with: what the index stores and search embeds."""

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
