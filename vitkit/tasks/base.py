"""The contract between a task and the runner."""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence, TypeVar

from vitkit.inputs.data import Preprocess, Sample
from vitkit.errors import InputError, OutputError
from vitkit.models.loading import LoadedModel
from vitkit.outputs.records import RecordLayout


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

    def postprocess(self, outputs: Any, samples: Sequence[Sample]) -> list[dict[str, Any] | InputError]:
        """One dict of record fields per ok sample, in the same order; an InputError in a sample's place
        makes that input's record an error (see `file_outputs`)."""
        ...


T = TypeVar("T")


def file_outputs(write: Callable[..., T], *args: Any) -> T | InputError:
    """`write(*args)`, which makes one input's own output files, or the InputError that fails that input alone:
    its file may have changed since it was read, or be a size the output format cannot hold. An
    OutputError (disk full, unwritable folder) would fail every input alike, so it still stops the run."""
    try:
        return write(*args)
    except (OutputError, BrokenPipeError):
        raise
    except InputError as exc:  # decoding the original again for drawing on it
        return exc
    except Exception as exc:  # noqa: BLE001 - Pillow's encoders raise OSError, ValueError, SystemError...
        reason = (str(exc).strip().splitlines() or [""])[0]
        return InputError(f"cannot write its output: {type(exc).__name__}: {reason}", kind="output failed")
