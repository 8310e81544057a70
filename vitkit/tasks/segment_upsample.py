"""Full-resolution label maps from low-resolution score maps, without full-resolution stacks.

The processors' post-processing upsamples every class, query or prompt map to the original image size
at once, (C, H, W) float32, before taking the per-pixel argmax: 7 GB for 150 classes on a 12 MP photo.
Here the same upsampling runs a few channels at a time with a running maximum, so peak memory is a few
(H, W) planes whatever the number of channels.

Why channel groups and not horizontal strips: torch derives each output row's source rows and weights
from the whole output size, so a strip interpolated on its own gets different weights, and rebuilding
the kernel's arithmetic by hand is exact only as long as it rounds (and fuses multiply-adds) as the
compiled kernel does. Bilinear interpolation computes every channel on its own, so a group of channels
gives bit-for-bit the values the full stack holds, provided torch runs the same kernel for the group
as for the full stack (see `_channel_groups`). Ties go to the lower channel, as in argmax.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch

# Channels upsampled together: peak memory holds about twice this many (H, W) float32 planes (torch's
# output and its working copy) plus the running maximum and winner. One plane at a time is no slower
# than the whole stack at once (measured: 100 queries to 12 MP, 18 s against 24 s on two cores).
CHANNELS_PER_PASS = 1
# torch's CPU bilinear kernel switches to a channels-last kernel for outputs with height + width at
# most this, and for exactly 3 channels on one thread; those kernels' per-channel results depend on the
# channel count, so such stacks are upsampled whole (they are small) and groups never hold 3 channels.
_SMALL_OUTPUT = 128
_OTHER_KERNEL_CHANNELS = 3

# (start, group) -> group, changed in place or replaced: what is compared is what this returns.
Transform = Callable[[int, torch.Tensor], torch.Tensor]


def _channel_groups(count: int, height: int, width: int, per_pass: int) -> list[tuple[int, int]]:
    """[start, stop) channel ranges whose upsampling gives the same values as the whole stack's."""
    if count <= max(per_pass, _OTHER_KERNEL_CHANNELS) or height + width <= _SMALL_OUTPUT:
        return [(0, count)]
    per_pass = 2 if per_pass == _OTHER_KERNEL_CHANNELS else per_pass
    bounds = [*range(0, count, per_pass), count]
    groups = list(zip(bounds, bounds[1:]))
    start, stop = groups[-1]
    if stop - start == _OTHER_KERNEL_CHANNELS:
        groups[-1:] = [(start, start + 2), (start + 2, stop)]
    return groups


def upsampled_groups(low_res: torch.Tensor, size: tuple[int, int]) -> Iterator[tuple[int, torch.Tensor]]:
    """(start, (k, H, W)) for consecutive channel groups of `low_res` (C, h, w), each upsampled exactly as
    `interpolate(low_res[None], size, mode="bilinear", align_corners=False)[0]` would hold them."""
    # The generic kernel, whatever memory layout the model left its output in.
    low_res = low_res.float().contiguous()
    for start, stop in _channel_groups(low_res.shape[0], size[0], size[1], CHANNELS_PER_PASS):
        group = low_res[None, start:stop]
        yield start, torch.nn.functional.interpolate(group, size=size, mode="bilinear", align_corners=False)[0]


def upsampled_argmax(low_res: torch.Tensor, size: tuple[int, int],
                     transform: Transform | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(maximum, argmax) over the channels of `low_res` (C, h, w) upsampled to `size`, each (H, W); the
    argmax in the smallest integer type that holds C. `transform` sees each upsampled group first (a
    sigmoid, a weighting, a count)."""
    count = low_res.shape[0]
    best = torch.empty(size, dtype=torch.float32, device=low_res.device)
    winner = torch.zeros(size, dtype=_index_dtype(count), device=low_res.device)
    better = torch.empty(size, dtype=torch.bool, device=low_res.device)
    step = torch.empty_like(winner)
    for start, group in upsampled_groups(low_res, size):
        if transform is not None:
            group = transform(start, group)
        for offset, plane in enumerate(group):
            if start + offset == 0:
                best.copy_(plane)
                continue
            # Strictly greater: on a tie the earlier channel keeps the pixel, as argmax does. In place,
            # plane by plane: a (k, H, W) max would allocate int64 indices the size of the image.
            torch.gt(plane, best, out=better)
            # winner += better * (channel - winner): masked_fill_'s branches cost 4x this on a CPU
            torch.neg(winner, out=step).add_(start + offset).mul_(better.view(torch.uint8))
            winner.add_(step)
            torch.maximum(best, plane, out=best)
    return best, winner


def _index_dtype(count: int) -> torch.dtype:
    return torch.uint8 if count <= 256 else torch.int16 if count <= 32768 else torch.int32
