"""Every kind of input the decoder must survive, checked on real files written by Pillow."""

from __future__ import annotations

import errno
import io
import json
import subprocess
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests import corpus
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


# --- real files from tests/corpus.py: order, bombs, corrupt PNGs, colour keys, codecs ----------------

_CHILD_DECODE = """
import json, sys
from vitkit.inputs.decode import DecodeOptions, decode_image
# VmHWM (this address space's peak), not getrusage's ru_maxrss: Linux keeps ru_maxrss across execve,
# so a child of a large pytest process would report its parent's peak.
def peak_kb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
results = []
for path in sys.argv[2:]:
    try:
        decoded = decode_image(path, DecodeOptions(max_pixels=int(sys.argv[1])))
        results.append([decoded.width, decoded.height, decoded.image.tobytes().hex()])
    except Exception as exc:
        results.append(getattr(exc, "message", repr(exc)))
print(json.dumps({"results": results, "peak_kb": peak_kb()}))
"""


def decode_in_child(*paths: Path, max_pixels: int = DecodeOptions().max_pixels) -> dict:
    """Decodes `paths` in order in a fresh interpreter: no plugin registered, nothing decoded before."""
    child = subprocess.run([sys.executable, "-c", _CHILD_DECODE, str(max_pixels), *map(str, paths)],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr
    return json.loads(child.stdout)


def test_a_tga_decoded_first_does_not_change_an_ico(tmp_path: Path) -> None:
    """TGA has no signature: once its plugin is registered ahead of ICO's, Pillow alone opens this ICO as a
    TGA. Decoded after a TGA in one process, the ICO must give exactly what it gives alone."""
    ico, reference = corpus.ico_that_tga_claims(tmp_path)
    tga = corpus.tga(tmp_path)
    alone = decode_in_child(ico)["results"]
    after_tga = decode_in_child(tga, ico)["results"]
    expected = np.asarray(Image.open(reference).convert("RGB"))
    assert alone[0][:2] == [150, 150]
    assert bytes.fromhex(alone[0][2]) == expected.tobytes()
    assert after_tga[1] == alone[0]
    assert after_tga[0][:2] == [24, 16]


def test_formats_without_a_signature_come_last_the_named_one_first() -> None:
    from vitkit.inputs.formats import open_order

    order = open_order("x.tga")
    unsigned = [name for name in order if Image.OPEN[name][1] is None]
    assert order[-len(unsigned):] == tuple(unsigned) and unsigned[0] == "TGA"
    assert {"TGA", "IM", "SPIDER"} <= set(unsigned)
    assert open_order("x.im")[-len(unsigned)] == "IM"
    assert open_order("x.ico").index("ICO") < open_order("x.ico").index("TGA")
    assert set(open_order("x.jpg")) == set(Image.OPEN)


def test_an_embedded_image_over_the_limit_is_refused_before_it_is_decoded(tmp_path: Path) -> None:
    """A 16x16 ICO around a 15000 x 15000 PNG (46 KB): decoding it would take over 1 GB. Between one and
    two times the limit Pillow only warns, so this also checks that its warning is the file's error."""
    path = corpus.ico_with_huge_png(tmp_path)
    assert path.stat().st_size < 100_000
    child = decode_in_child(path)
    side = corpus.BOMB_ICO_SIDE
    assert child["results"] == [f"an embedded image or frame of {side}x{side} pixels is over the 178,956,970-pixel "
                                "limit (decompression-bomb guard); raise it with --max-pixels"]
    assert child["peak_kb"] < 1024 * 1024, f"peak memory {child['peak_kb'] / 1024:.0f} MB"


def test_a_lower_limit_applies_to_embedded_images_too(tmp_path: Path) -> None:
    png = corpus.encoded(corpus.pattern(120, 100), "PNG")
    (tmp_path / "small-header.ico").write_bytes(corpus.ico_with_png(png, 16, 16))
    with pytest.raises(InputError) as info:
        decode_image(str(tmp_path / "small-header.ico"), DecodeOptions(max_pixels=10_000))
    assert info.value.message == ("an embedded image or frame of 120x100 pixels is over the 10,000-pixel limit "
                                  "(decompression-bomb guard); raise it with --max-pixels")
    assert info.value.kind == "too large"
    decoded = decode_image(str(tmp_path / "small-header.ico"))  # under the limit: the pixels' size, not the header's
    assert (decoded.width, decoded.height) == decoded.image.size == (120, 100)


@pytest.mark.parametrize("broken", [b for b in corpus.BROKEN_FILES if b.name.endswith(".png")], ids=lambda b: b.name)
def test_a_png_decode_error_is_the_files_error_never_partial_pixels(broken: corpus.BrokenFile,
                                                                    tmp_path: Path) -> None:
    """Overwritten IDAT bytes, an APNG frame sequence error, a cut end chunk: read before the pixels, the
    EXIF swallowed these errors and a second load kept the rows decoded so far."""
    path = tmp_path / broken.name
    path.write_bytes(broken.content())
    with pytest.raises(InputError) as info:
        decode_image(str(path))
    assert info.value.message == broken.reason


@pytest.mark.parametrize("mode", ["RGB", "L", "1", "P"])
def test_a_transparent_colour_is_composited_on_white(mode: str, tmp_path: Path) -> None:
    path, expected = corpus.colour_key_png(tmp_path, mode)
    decoded = decode_image(str(path))
    assert np.array_equal(np.asarray(decoded.image), expected)
    assert "transparency" not in decoded.image.info  # applied, so nothing downstream applies it again


@pytest.mark.parametrize("name", sorted(corpus.STUB_FILES))
def test_formats_pillow_only_identifies_are_unsupported_not_corrupt(name: str, tmp_path: Path) -> None:
    (tmp_path / name).write_bytes(corpus.STUB_FILES[name])
    fmt = {"grib": "GRIB", "bufr": "BUFR", "h5": "HDF5", "wmf": "WMF"}[name.rsplit(".", 1)[1]]
    with pytest.raises(InputError) as info:
        decode_image(str(tmp_path / name))
    assert info.value.message.startswith(f"unsupported: needs a {fmt} handler") and info.value.kind == "unsupported"


def test_eps_without_ghostscript_is_unsupported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import EpsImagePlugin

    monkeypatch.setattr(EpsImagePlugin, "gs_binary", False)  # as on a machine without `gs`
    (tmp_path / "figure.eps").write_bytes(corpus.EPS_FILE)
    with pytest.raises(InputError) as info:
        decode_image(str(tmp_path / "figure.eps"))
    assert info.value.message == "unsupported: needs Ghostscript (the `gs` program) to render EPS/PostScript"


def test_a_tiff_compression_pillow_has_no_decoder_for_is_unsupported(tmp_path: Path) -> None:
    path = corpus.tiff_with_compression(tmp_path, 12345, "unknown-compression.tif")
    with pytest.raises(InputError) as info:
        decode_image(str(path))
    assert info.value.message == "unsupported: needs a TIFF decoder for compression 12345 (Pillow has none)"


def test_a_tiff_compression_libtiff_lacks_is_unsupported(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    path = corpus.tiff_with_compression(tmp_path, 50001, "webp-compression.tif")  # WebP in TIFF: rarely built
    with pytest.raises(InputError) as info:
        decode_image(str(path))
    if info.value.message.startswith("corrupt image data"):
        pytest.skip("this libtiff decodes WebP: the deflate data under the WebP tag is only corrupt")
    assert info.value.message == "unsupported: needs a libtiff built with WEBP compression (this build lacks it)"
    assert capfd.readouterr().err == ""


def test_libtiff_messages_become_the_files_reason_not_stray_stderr(tmp_path: Path,
                                                                  capfd: pytest.CaptureFixture) -> None:
    path = corpus.tiff_that_libtiff_rejects(tmp_path)
    with pytest.raises(InputError) as info:
        decode_image(str(path))
    assert info.value.message.startswith("corrupt image data (OSError: decoder error -2, ZIPDecode: ")
    assert capfd.readouterr().err == ""


def test_c_library_lines_on_a_good_decode_become_warnings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capfd: pytest.CaptureFixture) -> None:
    """What C code prints on fd 2 during a decode that succeeds (libtiff's warnings) is that file's warnings."""
    import ctypes
    from PIL import ImageFile

    libc = ctypes.CDLL(None)
    original = ImageFile.ImageFile.load

    def noisy_load(self: ImageFile.ImageFile) -> object:
        for _ in range(200):  # as libtiff does on some files: the same lines, hundreds of times
            for line in (b"TIFFReadDirectory: Warning, one.\n", b"TIFFReadDirectory: Warning, two.\n"):
                libc.write(2, line, len(line))
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", noisy_load)
    decoded = decode_image(save(tmp_path, "a.png", Image.new("RGB", (4, 4))))
    assert decoded.warnings == ("decoder warning: TIFFReadDirectory: Warning, one.",
                                "decoder warning: TIFFReadDirectory: Warning, two.")
    assert capfd.readouterr().err == ""


def test_an_errno_from_bad_data_is_corrupt_not_a_disk_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A seek to an offset a header made up fails with EINVAL: the data is bad, the disk is fine."""
    path = save(tmp_path, "a.png", Image.new("RGB", (4, 4)))

    def failing_load(*_: object) -> None:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", failing_load)
    with pytest.raises(InputError) as info:
        decode_image(path)
    assert (info.value.message, info.value.kind) == ("corrupt image data (OSError: Invalid argument)", "corrupt")


def test_a_message_from_another_thread_never_lands_in_a_decoders_stderr_capture(capfd: pytest.CaptureFixture) -> None:
    """While one thread decodes with fd 2 redirected (to catch libjpeg's and libtiff's messages), another
    thread's error line waits for the capture to end: it reaches stderr and is not taken for the file's warning."""
    import threading
    import time

    from vitkit.inputs.guard import c_stderr_captured
    from vitkit.runtime.report import Reporter

    fd2 = open(2, "w", closefd=False, buffering=1)  # as sys.stderr is outside pytest: writes go to fd 2
    reporter = Reporter(stream=fd2)
    started, printed = threading.Event(), threading.Event()

    def say() -> None:
        started.wait()
        reporter.message("error: other.jpg: truncated")
        printed.set()

    speaker = threading.Thread(target=say)
    speaker.start()
    with c_stderr_captured() as lines:
        started.set()
        time.sleep(0.3)  # the other thread prints now, or waits for this capture to end
        os.write(2, b"libjpeg: Corrupt JPEG data\n")
    speaker.join(5)
    assert printed.is_set()
    assert lines == ["libjpeg: Corrupt JPEG data"]
    assert "error: other.jpg: truncated" in capfd.readouterr().err
