"""A guard in front of "resize the shorter side, then centre-crop" transforms (timm's and open_clip's eval
transforms). Without it a 1 x 5000 image is upscaled to 248 x 1,240,000 pixels (gigabytes) before the
crop throws nearly all of it away.

The guard first centre-crops the longer side to MARGIN times what the model sees of it. Within that
ratio the transform gets the very same image, so ordinary panoramas (even 10:1) give bit-identical
results; beyond it the model sees the same central region, resampled from a smaller image. The guard
exists only for the cost: at 224 px the largest resize it lets through is 248 x 7936 (2 MP).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from PIL import Image

# How many times longer than what the model sees the kept long side is. Cropping changes the pixel grid
# the resize samples, so it must never touch a real photo or panorama: only images so thin that the
# resize itself would be the problem (1 x 5000 -> 248 x 1,240,000) are cropped.
MARGIN = 32.0


@dataclass(frozen=True)
class AspectCapped:
    """`transform` behind a centre crop of the long side to `max_ratio` x the short side; picklable."""

    transform: Callable[[Any], Any]
    max_ratio: float

    def __call__(self, image: Any) -> Any:
        return self.transform(crop_long_side(image, self.max_ratio))

    @property
    def transforms(self) -> list[Any]:
        """The wrapped Compose's steps, for code that reads sizes from them (draft decoding)."""
        return list(getattr(self.transform, "transforms", ()))


def crop_long_side(image: Any, max_ratio: float) -> Any:
    """A PIL image centre-cropped so its long side is at most `max_ratio` x its short side."""
    width, height = image.size
    limit = math.ceil(max_ratio * min(width, height))
    if max(width, height) <= limit:
        return image
    if width > height:
        left = (width - limit) // 2
        return image.crop((left, 0, left + limit, height))
    top = (height - limit) // 2
    return image.crop((0, top, width, top + limit))


def squash_long_side(image: Any, max_ratio: float) -> Any:
    """A PIL image whose long side is resized down to at most `max_ratio` x its short side.

    For processors that keep the aspect ratio (DETR, Mask2Former; see `hf.processor_max_ratio`): a
    1 x 5000 image would otherwise come out 0 pixels wide under `longest_edge`, or gigabytes under
    `shortest_edge` alone. Unlike a crop, squashing keeps every part of the image in place relative to
    the whole, and boxes and masks are relative to the whole until they are scaled back to the original
    size.
    """
    width, height = image.size
    limit = math.ceil(max_ratio * min(width, height))
    if max(width, height) <= limit:
        return image
    size = (limit, height) if width > height else (width, limit)
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)


def cap_aspect_ratio(transform: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """The transform behind the guard when it resizes the shorter side and centre-crops; else unchanged
    (a transform that squashes or letterboxes sees the whole image, and costs little anyway)."""
    max_ratio = _safe_ratio(transform)
    return transform if max_ratio is None else AspectCapped(transform, max_ratio)


def _safe_ratio(transform: Any) -> float | None:
    """A long:short ratio above which cropping cannot change what the model sees, for a Compose that
    starts with a shorter-side resize then a centre crop; None for any other transform."""
    from timm.data.transforms import ResizeKeepRatio
    from torchvision.transforms import CenterCrop, Resize

    steps = list(getattr(transform, "transforms", ()))
    if len(steps) < 2 or not isinstance(steps[1], CenterCrop):
        return None
    resize, crop = steps[0], steps[1]
    if isinstance(resize, Resize) and (isinstance(resize.size, int) or len(resize.size) == 1):
        short_target = resize.size if isinstance(resize.size, int) else resize.size[0]
    elif isinstance(resize, ResizeKeepRatio) and resize.longest == 0:  # covers the target: the short side decides
        short_target = min(resize.size)
    else:
        return None
    # The image's short side s becomes >= short_target, so the crop spans at most
    # max(crop) * s / short_target of the original along either side.
    return MARGIN * max(max(crop.size) / short_target, 1.0)
