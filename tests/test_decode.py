"""Every kind of input the decoder must survive, checked on real files written by Pillow."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitkit.inputs.decode import DecodeOptions, decode_image
from vitkit.errors import InputError


def save(tmp_path: Path, name: str, image: Image.Image, **kwargs) -> str:
    path = tmp_path / name
    image.save(path, **kwargs)
    return str(path)


def pixel(decoded, x: int, y: int) -> tuple[int, int, int]:
    return decoded.image.getpixel((x, y))


def test_rgb_jpeg_roundtrip(tmp_path: Path) -> None:
    decoded = decode_image(save(tmp_path, "a.jpg", Image.new("RGB", (30, 20), (200, 10, 10))))
    assert (decoded.width, decoded.height, decoded.image.mode) == (30, 20, "RGB")
    assert np.allclose(pixel(decoded, 5, 5), (200, 10, 10), atol=3)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_applied(tmp_path: Path, orientation: int) -> None:
    """A red dot in the stored top-left corner lands where a viewer would show it."""
    stored = Image.new("RGB", (40, 20), (255, 255, 255))
    stored.paste((255, 0, 0), (0, 0, 8, 8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    decoded = decode_image(save(tmp_path, f"o{orientation}.png", stored, exif=exif.tobytes()))
    expected_size = (20, 40) if orientation >= 5 else (40, 20)
    assert (decoded.width, decoded.height) == expected_size == decoded.image.size
    from PIL import ImageOps

    viewer = ImageOps.exif_transpose(Image.open(tmp_path / f"o{orientation}.png")).convert("RGB")
    assert np.array_equal(np.asarray(decoded.image), np.asarray(viewer))


def test_malformed_exif_warns_and_uses_raw_pixels(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 42
    decoded = decode_image(save(tmp_path, "bad.png", Image.new("RGB", (10, 6)), exif=exif.tobytes()))
    assert decoded.image.size == (10, 6)
    assert decoded.warnings and "orientation" in decoded.warnings[0]


def test_cmyk_jpeg(tmp_path: Path) -> None:
    decoded = decode_image(save(tmp_path, "c.jpg", Image.new("CMYK", (16, 16), (0, 255, 255, 0))))
    assert decoded.image.mode == "RGB"
    r, g, b = pixel(decoded, 8, 8)
    assert r > 200 and g < 60 and b < 60


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 32896, 65535]], dtype=np.uint16)
    decoded = decode_image(save(tmp_path, "g16.png", Image.fromarray(values)))
    assert [pixel(decoded, x, 0)[0] for x in range(3)] == [0, 128, 255]


def test_palette_with_transparency_composited_on_white(tmp_path: Path) -> None:
    image = Image.new("P", (4, 1))
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.putdata([0, 1, 0, 1])
    decoded = decode_image(save(tmp_path, "p.png", image, transparency=0))
    assert pixel(decoded, 0, 0) == (255, 255, 255) and pixel(decoded, 1, 0) == (255, 0, 0)


@pytest.mark.parametrize("mode,color", [("RGBA", (0, 0, 255, 0)), ("LA", (0, 0))])
def test_alpha_composited_on_white(tmp_path: Path, mode: str, color: tuple) -> None:
    decoded = decode_image(save(tmp_path, "a.png", Image.new(mode, (3, 3), color)))
    assert pixel(decoded, 1, 1) == (255, 255, 255)


def test_half_transparent_rgba_blends(tmp_path: Path) -> None:
    decoded = decode_image(save(tmp_path, "h.png", Image.new("RGBA", (3, 3), (0, 0, 0, 128))))
    assert all(abs(c - 127) <= 1 for c in pixel(decoded, 1, 1))


def test_one_bit_and_greyscale(tmp_path: Path) -> None:
    assert pixel(decode_image(save(tmp_path, "b.png", Image.new("1", (5, 5), 1))), 2, 2) == (255, 255, 255)
    assert pixel(decode_image(save(tmp_path, "l.png", Image.new("L", (5, 5), 77))), 2, 2) == (77, 77, 77)


def test_animated_gif_gives_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    r, g, _ = pixel(decode_image(str(path)), 4, 4)
    assert r > 200 and g < 50


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "e.jpg").write_bytes(b"")
    with pytest.raises(InputError, match="empty file"):
        decode_image(str(tmp_path / "e.jpg"))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files(tmp_path: Path, fmt: str) -> None:
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, fmt)
    path = tmp_path / f"t.{fmt.lower()}"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(InputError) as info:
        decode_image(str(path))
    assert "truncated" in info.value.message or "corrupt" in info.value.message


def test_text_file_named_jpg(tmp_path: Path) -> None:
    (tmp_path / "x.jpg").write_text("<html>not an image</html>")
    with pytest.raises(InputError, match="not an image"):
        decode_image(str(tmp_path / "x.jpg"))


def test_pixel_cap_rejects_from_the_header_and_names_the_flag(tmp_path: Path) -> None:
    path = save(tmp_path, "big.png", Image.new("L", (200, 100)))
    with pytest.raises(InputError, match="--max-pixels") as info:
        decode_image(path, DecodeOptions(max_pixels=10_000))
    assert "200x100" in info.value.message and info.value.kind == "too large"
    assert decode_image(path, DecodeOptions(max_pixels=20_000)).width == 200


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        decode_image(str(tmp_path / "gone.jpg"))


@pytest.mark.parametrize(("error", "message", "kind"), [
    (PermissionError(13, "Permission denied"), "cannot read: Permission denied", "unreadable"),
    (OSError(5, "Input/output error"), "cannot read: Input/output error", "unreadable"),
    (FileNotFoundError(2, "No such file or directory"), "no such file (or a broken link)", "missing"),
])
def test_file_that_fails_after_the_check_is_unreadable_not_corrupt(
        error: OSError, message: str, kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Changed after the stat check, or on a failing disk: the OS's reason, once, without the path again."""
    path = save(tmp_path, "a.png", Image.new("RGB", (4, 4)))
    error.filename = path

    def failing_open(*_: object, **__: object) -> Image.Image:
        raise error

    monkeypatch.setattr(Image, "open", failing_open)
    with pytest.raises(InputError) as info:
        decode_image(path)
    assert (info.value.message, info.value.kind) == (message, kind)


def test_decoder_errors_without_an_errno_stay_corrupt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save(tmp_path, "a.png", Image.new("RGB", (4, 4)))

    def failing_load(*_: object) -> None:
        raise OSError("broken data stream when reading image file")  # how Pillow's decoders fail

    monkeypatch.setattr(Image.Image, "load", failing_load)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", failing_load)
    with pytest.raises(InputError, match=r"^corrupt image data \(OSError: broken data stream") as info:
        decode_image(path)
    assert info.value.kind == "corrupt"


def test_draft_decodes_large_jpeg_smaller_but_reports_full_size(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (1500, 2000, 3), dtype=np.uint8))
    path = save(tmp_path, "large.jpg", image, quality=85)
    full = decode_image(path, DecodeOptions(draft_size=None))
    drafted = decode_image(path, DecodeOptions(draft_size=249))
    assert full.image.size == (2000, 1500)
    assert (drafted.width, drafted.height) == (2000, 1500)
    assert drafted.image.size == (1000, 750)  # 1/2 scale: the smallest that keeps 2 x 249 on the short side
    assert min(decode_image(path, DecodeOptions(draft_size=100)).image.size) >= 200


def test_draft_never_touches_png(tmp_path: Path) -> None:
    path = save(tmp_path, "large.png", Image.new("RGB", (2000, 1500)))
    assert decode_image(path, DecodeOptions(draft_size=100)).image.size == (2000, 1500)
