"""The contract between a task and the runner."""

from __future__ import annotations

from typing import Any, Protocol, Sequence

from vitkit.data import Preprocess, Sample
from vitkit.loading import LoadedModel
from vitkit.records import RecordLayout


class Task(Protocol):
    model: LoadedModel
    preprocess: Preprocess  # picklable: it travels to dataloader workers, the model does not
    draft_size: int | None  # shorter side the model needs from a JPEG, for draft decoding; None for full decode
    layout: RecordLayout
    # Optional: `collate_inputs(list_of_preprocessed) -> batch` for inputs torch's default_collate
    # cannot stack (e.g. DETR's variable-size images, padded with a pixel mask). Picklable.

    def forward(self, inputs: Any) -> Any:
        """Batched inputs already on the model's device -> outputs; the runner provides inference mode and autocast."""
        ...

    def postprocess(self, outputs: Any, samples: Sequence[Sample]) -> list[dict[str, Any]]:
        """One dict of record fields per ok sample, in the same order."""
        ...
