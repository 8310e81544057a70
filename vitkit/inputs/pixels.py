"""uint8 pixels from the dataloader, normalised on the model's device.

A model's eval transform ends in ToTensor + Normalize, which turn each image into float32 in the
worker: 4 bytes a channel through worker->main IPC and, on a GPU, over PCIe. The runner moves that
tail to the device instead, so a batch travels as uint8 (a quarter of the bytes) and is normalised
where the model runs, with the very same arithmetic (identical float32 results).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

# A task's preprocess (image, meta) or a bare transform (image): split_normalize only looks at its structure.
Preprocess = Callable[..., Any]


@dataclass(frozen=True)
class PilToUint8:
    """PIL image -> (C, H, W) uint8 tensor: torchvision's ToTensor without its division by 255."""

    def __call__(self, image: Any) -> torch.Tensor:
        array = np.array(image, dtype=np.uint8, copy=True)  # (H, W, C), or (H, W) for one channel
        if array.ndim == 2:
            array = array[:, :, None]
        return torch.from_numpy(array).permute(2, 0, 1).contiguous()


@dataclass(frozen=True)
class DeviceNormalize:
    """(B, C, H, W) uint8 -> float32 on the same device, exactly as ToTensor then Normalize compute it
    (x / 255, then (x - mean) / std, in float32): the model's weights are float32 and autocast casts
    at its first layer, so normalising in a lower precision would only lose bits earlier."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        mean = torch.as_tensor(self.mean, dtype=torch.float32, device=pixels.device).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=torch.float32, device=pixels.device).view(-1, 1, 1)
        return pixels.to(torch.float32).div(255).sub(mean).div(std)


def split_normalize(preprocess: Preprocess) -> tuple[Preprocess, DeviceNormalize | None]:
    """(preprocess that stops at uint8 pixels, the normalisation to run on the device), or
    (preprocess unchanged, None) when it does not end in ToTensor + Normalize (processors, custom code).

    Wrappers around a transform (frozen dataclasses with a `transform` field, such as the aspect
    guard in backends/aspect.py) are rebuilt around the shortened transform.
    """
    if dataclasses.is_dataclass(preprocess) and any(f.name == "transform" for f in dataclasses.fields(preprocess)):
        inner, normalize = split_normalize(preprocess.transform)
        return (dataclasses.replace(preprocess, transform=inner), normalize) if normalize else (preprocess, None)
    from torchvision.transforms import Compose, Normalize, ToTensor  # timm's MaybeToTensor is a ToTensor

    if not isinstance(preprocess, Compose) or len(preprocess.transforms) < 2:
        return preprocess, None
    *head, to_tensor, normalize = preprocess.transforms
    if not (isinstance(to_tensor, ToTensor) and isinstance(normalize, Normalize)):
        return preprocess, None
    device_normalize = DeviceNormalize(_floats(normalize.mean), _floats(normalize.std))
    return Compose([*head, PilToUint8()]), device_normalize


def _floats(values: Any) -> tuple[float, ...]:
    if isinstance(values, torch.Tensor):
        values = values.tolist()
    return tuple(float(v) for v in values)
