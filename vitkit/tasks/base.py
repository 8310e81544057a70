"""The contract between a task and the runner, the same for every task.

    preprocess(image, meta) -> inputs      in dataloader workers, one input at a time
    collate_inputs([inputs, ...]) -> batch  in the workers too
    forward(batch) -> outputs               the model, on the device, under the runner's context
    postprocess(outputs, samples) -> [fields | Artifacts | InputError]   on the runner's thread
    Artifacts.render() -> [ImageFile]       in the output stage (vitkit/outputs/artifacts.py)

The runner owns the device, inference mode, autocast, the out-of-memory back-off (a batch is split
and forward runs again on its halves) and the fp32 rerun of a batch whose outputs are not finite, so
a task never enters those contexts itself (one-off model calls outside forward, such as label or
prompt embeddings, use `vitkit.runtime.runner.model_context`).
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

from vitkit.errors import InputError
from vitkit.inputs.data import Collate, Preprocess, Sample
from vitkit.models.loading import LoadedModel
from vitkit.outputs.artifacts import Artifacts, file_outputs
from vitkit.outputs.records import RecordLayout

__all__ = ["Artifacts", "Task", "TaskResult", "file_outputs"]

# What postprocess makes of one ok input: its record fields; fields completed by files the output stage
# writes (all of them or none); or the InputError that makes that input's record an error.
TaskResult = dict[str, Any] | Artifacts | InputError


class Task(Protocol):
    model: LoadedModel
    # (PIL RGB image as displayed, possibly draft-reduced; ImageMeta: path and full displayed size) ->
    # inputs. Picklable: it travels to dataloader workers, the model does not. Per-input work that needs
    # the path or size (inpaint's patch masks) belongs here. Raise InputError to fail that input alone.
    preprocess: Preprocess
    # Preprocessed inputs of a batch's ok samples -> the batch (torch's default_collate stacks them;
    # a processor's pad, e.g. DETR's variable-size images with a pixel mask). Picklable. Every tensor's
    # dim 0 must be the sample: the runner slices batches along it to retry halves after out-of-memory.
    collate_inputs: Collate
    draft_size: int | None  # shorter side the model needs from a JPEG, for draft decoding; None for full decode
    layout: RecordLayout

    def forward(self, inputs: Any) -> Any:
        """A batch already on the model's device -> outputs: every model call of the batch happens here,
        under the runner's inference mode and autocast (re-run in fp32 if any output is not finite;
        run again on halves of the batch after out-of-memory, so it must not keep state between calls)."""
        ...

    def postprocess(self, outputs: Any, samples: Sequence[Sample]) -> list[TaskResult]:
        """One result per ok sample, in the same order: tensors become record fields here; files are
        only described (an `Artifacts` render) and made by the output stage, off the model loop."""
        ...
