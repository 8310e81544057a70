"""Property: random small images in every Pillow mode, saved in every format that can hold them, go
through decode_image and the models' real preprocessing without a crash, as RGB of the right size."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vitkit.inputs.decode import decode_image, to_rgb

MODES = ("1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "I;16", "I;16B", "I;16L", "F",
         "LA", "La", "PA", "RGBa", "RGBX")
COLOUR_KEY_MODES = ("1", "L", "RGB", "I;16")
FORMATS = ("PNG", "TIFF", "JPEG", "WEBP", "GIF", "BMP", "PPM", "TGA", "SGI", "PCX", "ICO", "IM", "QOI", "DDS")


def _can_save(mode: str, fmt: str) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            Image.new(mode, (2, 2)).save(io.BytesIO(), fmt)
        except Exception:  # noqa: BLE001 - any refusal means this Pillow cannot write the mode in this format
            return False
    return True


# Worked out from this Pillow, not typed in: a mode no format can hold (La, RGBa...) is still tested, built in memory.
SAVEABLE = {mode: tuple(fmt for fmt in FORMATS if _can_save(mode, fmt)) for mode in MODES}


@st.composite
def images(draw: Callable) -> Image.Image:
    mode = draw(st.sampled_from(MODES))
    width, height = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    length = len(Image.new(mode, (width, height)).tobytes())
    image = Image.frombytes(mode, (width, height), draw(st.binary(min_size=length, max_size=length)))
    if mode == "P" and draw(st.booleans()):
        image.info["transparency"] = draw(st.integers(0, 255))
    if mode in COLOUR_KEY_MODES and draw(st.booleans()):  # a PNG tRNS colour key: one value fully transparent
        image.info["transparency"] = image.getpixel((draw(st.integers(0, width - 1)), 0))
    return image


@pytest.fixture(scope="session")
def preprocessors(tiny_timm_dir: Path, tiny_open_clip_dir: Path) -> list[Callable[[Any], torch.Tensor]]:
    """The transforms the loader builds for a timm and an open_clip model, as the tasks use them."""
    from vitkit.models.loading import load_model
    from vitkit.models.registry import CLASSIFY, SEARCH, resolve

    timm_model = load_model(resolve(str(tiny_timm_dir), CLASSIFY), CLASSIFY, "cpu", "fp32")
    clip_model = load_model(resolve(str(tiny_open_clip_dir), SEARCH), SEARCH, "cpu", "fp32")
    return [timm_model.assets.transform, clip_model.assets.transform]


def check_model_inputs(rgb: Image.Image, preprocessors: list[Callable[[Any], torch.Tensor]]) -> None:
    for preprocess in preprocessors:
        tensor = preprocess(rgb)
        assert tensor.ndim == 3 and tensor.shape[0] == 3 and tensor.shape[1] == tensor.shape[2]
        assert torch.isfinite(tensor).all()


def check_known_values(original: Image.Image, rgb: Image.Image) -> None:
    """Where the right colour is plain arithmetic, the pixels must be exactly it."""
    pixels = np.asarray(rgb).astype(np.int64)
    if "transparency" in original.info and original.mode in COLOUR_KEY_MODES:
        values = np.asarray(original).astype(np.int64)
        key = np.asarray(original.info["transparency"]).astype(np.int64)  # 0/255 for "1" as Pillow gives it
        if original.mode == "1":
            values = values * 255
        clear = np.all(values[..., None] == key, axis=-1) if original.mode != "RGB" else np.all(values == key, axis=-1)
        assert (pixels[clear] == 255).all()
        if original.mode == "RGB":
            assert (pixels[~clear] == values[~clear]).all()
        return
    if original.mode in ("L", "1"):
        grey = np.asarray(original.convert("L")).astype(np.int64)
        assert (pixels == grey[..., None]).all()
    elif original.mode.startswith("I;16"):
        values = np.asarray(original).astype(np.float64)
        assert (pixels[..., 0] == np.rint(values / 257)).all()  # scaled: 65535 -> 255, never clipped
    elif original.mode == "RGBA":
        rgba = np.asarray(original).astype(np.int64)
        opaque, clear = rgba[..., 3] == 255, rgba[..., 3] == 0
        assert (pixels[opaque] == rgba[opaque][:, :3]).all() and (pixels[clear] == 255).all()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(image=images(), choice=st.integers(0, 1000))
def test_any_mode_and_format_decodes_to_rgb_the_models_accept(image: Image.Image, choice: int,
                                                              preprocessors: list, tmp_path_factory) -> None:
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == image.size
    check_known_values(image, rgb)
    check_model_inputs(rgb, preprocessors)
    formats = SAVEABLE[image.mode]
    if not formats:
        return
    fmt = formats[choice % len(formats)]
    path = tmp_path_factory.mktemp("hypothesis") / f"image.{fmt.lower()}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image.save(path, fmt)
    decoded = decode_image(str(path))
    assert decoded.image.mode == "RGB" and decoded.image.size == (decoded.width, decoded.height)
    assert (decoded.width, decoded.height) == image.size
    check_model_inputs(decoded.image, preprocessors)


def test_every_mode_is_saveable_in_some_format_or_built_in_memory() -> None:
    """Guards the table above: losing a format for a mode narrows what the property test covers."""
    assert all(SAVEABLE[mode] for mode in ("1", "L", "P", "RGB", "RGBA", "CMYK", "I", "I;16", "F", "LA", "PA"))
    assert "PNG" in SAVEABLE["I;16"] and "TIFF" in SAVEABLE["F"] and "JPEG" in SAVEABLE["CMYK"]
