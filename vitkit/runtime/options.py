"""How a run batches and decodes: options a caller builds before any model (or torch) is loaded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from vitkit.inputs.decode import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    import torch

# Without --batch-size a GPU gets this many times a command's CPU batch: a GPU needs big batches to
# stay busy, and the runner's out-of-memory back-off halves them where memory is short.
GPU_BATCH_FACTOR = 4


@dataclass(frozen=True)
class RunOptions:
    batch_size: int | None = None  # None: default_batch_size, scaled up on a GPU
    workers: int | None = None  # None: a default suited to this machine
    draft: bool = True  # reduced-scale JPEG decoding when the model input is much smaller than the image
    max_pixels: int = DEFAULT_MAX_PIXELS
    default_batch_size: int = 16  # the command's own default on CPU

    def batch_size_for(self, device: torch.device) -> int:
        if self.batch_size is not None:
            return self.batch_size
        return self.default_batch_size * (GPU_BATCH_FACTOR if device.type == "cuda" else 1)
