"""A corpus of hostile inputs, written into a folder on demand: broken files, unusual but valid images
(each with the plain RGB file that should give the same results), awkward names and folder layouts.

Every writer is deterministic and produces small files, so a test can build just what it needs in a
temp dir. The `reason` of a broken file is the exact text vitkit reports for it.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageOps

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EXIF_ORIENTATION = 0x0112
NOT_AN_IMAGE = "not an image Pillow can read (unknown or corrupt format)"
TRUNCATED = "truncated image data (file cut short)"
BOMB_SIDE = 20_000  # 400 MP in the header: over the 179 MP cap, a few hundred bytes on disk


def pattern(width: int, height: int, seed: int = 0, colours: int | None = None) -> Image.Image:
    """Random RGB pixels; with `colours`, drawn from that many, so palette formats store them losslessly."""
    rng = np.random.default_rng(seed)
    if colours is None:
        return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")
    palette = rng.integers(0, 256, (colours, 3), dtype=np.uint8)
    return Image.fromarray(palette[rng.integers(0, colours, (height, width))], "RGB")


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def grey_png(width: int, height: int, chunks: list[tuple[bytes, bytes]]) -> bytes:
    """An 8-bit greyscale PNG with exactly the chunks given between IHDR and IEND (CRCs correct)."""
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    return PNG_SIGNATURE + header + b"".join(png_chunk(k, d) for k, d in chunks) + png_chunk(b"IEND", b"")


# --- broken files ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BrokenFile:
    name: str
    content: Callable[[], bytes]
    reason: str  # vitkit's exact error text for it
    pillow_error: str  # what Pillow itself raises on open() + load(), for the record


def _truncated(fmt: str) -> bytes:
    data = encoded(pattern(64, 64), fmt)
    return data[: len(data) // 2]


def _bomb_png() -> bytes:
    # One row of real data: the cap must refuse it from the header, before any decoding.
    return grey_png(BOMB_SIDE, BOMB_SIDE, [(b"IDAT", zlib.compress(b"\0" * (BOMB_SIDE + 1)))])


def _broken_chunk_png() -> bytes:
    # The pixel data continues in a second IDAT whose type is garbage: Pillow raises SyntaxError in load().
    rows = zlib.compress(b"".join(b"\0" + bytes(range(16)) for _ in range(16)))
    return grey_png(16, 16, [(b"IDAT", rows[:10]), (b"ID\xffT", rows[10:])])


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, data) of every chunk of a PNG, for rebuilding it with png_file() after a change."""
    chunks, position = [], len(PNG_SIGNATURE)
    while position < len(data):
        (length,) = struct.unpack(">I", data[position:position + 4])
        chunks.append((data[position + 4:position + 8], data[position + 8:position + 8 + length]))
        position += 12 + length
    return chunks


def png_file(chunks: list[tuple[bytes, bytes]]) -> bytes:
    return PNG_SIGNATURE + b"".join(png_chunk(kind, data) for kind, data in chunks)


def _overwritten_idat_png() -> bytes:
    # Zeros over the middle of the compressed pixels, CRCs recomputed: every chunk is well formed, the
    # deflate stream is not. Pillow's load() raises, and a second load() would keep the rows before it.
    chunks = png_chunks(encoded(pattern(64, 64, seed=12), "PNG"))
    kind, data = next(chunk for chunk in chunks if chunk[0] == b"IDAT")
    broken = data[:len(data) // 2] + bytes(64) + data[len(data) // 2 + 64:]
    return png_file([(kind, broken) if kind == b"IDAT" else (kind, d) for kind, d in chunks])


def _apng_sequence_error() -> bytes:
    # An APNG declaring 0 frames whose default image is no frame: Pillow warns "Invalid APNG" on open
    # and its load() raises a frame sequence error.
    frames = [pattern(16, 16, seed=13 + i, colours=8) for i in range(3)]
    chunks = png_chunks(encoded(frames[0], "PNG", save_all=True, append_images=frames[1:]))
    first_fctl = [kind for kind, _ in chunks].index(b"fcTL")
    chunks = chunks[:first_fctl] + chunks[first_fctl + 1:]
    return png_file([(kind, struct.pack(">II", 0, 0) if kind == b"acTL" else data) for kind, data in chunks])


def _truncated_end_chunk_png() -> bytes:
    # All pixel data present; the file ends inside a text chunk after it (no IEND).
    chunks = png_chunks(encoded(pattern(16, 16, seed=14), "PNG"))
    text = png_chunk(b"tEXt", b"Comment\0" + b"x" * 100)
    return png_file(chunks[:-1])[:] + text[:40]


def _dds_short_data() -> bytes:
    data = encoded(Image.new("RGB", (8, 8)), "DDS")
    return data[: len(data) // 2]


BROKEN_FILES: tuple[BrokenFile, ...] = (
    BrokenFile("empty.jpg", lambda: b"", "empty file (0 bytes)", "UnidentifiedImageError"),
    BrokenFile("truncated.jpg", lambda: _truncated("JPEG"), TRUNCATED, "OSError"),
    BrokenFile("truncated.png", lambda: _truncated("PNG"), TRUNCATED, "OSError"),
    BrokenFile("page.jpg", lambda: b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n", NOT_AN_IMAGE,
               "UnidentifiedImageError"),
    BrokenFile("bomb.png", _bomb_png,
               f"{BOMB_SIDE}x{BOMB_SIDE} pixels is over the 178,956,970-pixel limit (decompression-bomb guard); "
               "raise it with --max-pixels", "DecompressionBombError"),
    BrokenFile("broken-chunk.png", _broken_chunk_png,
               "corrupt image data (SyntaxError: broken PNG file (chunk b'ID\\xffT'))", "SyntaxError"),
    BrokenFile("bad-maxval.ppm", lambda: b"P5\n2 2\n65536\n" + bytes(8),
               "corrupt image data (ValueError: maxval must be greater than 0 and less than 65536)", "ValueError"),
    BrokenFile("short.dds", _dds_short_data, "corrupt image data (ValueError: not enough image data)", "ValueError"),
    BrokenFile("overwritten-idat.png", _overwritten_idat_png,
               "corrupt image data (OSError: broken data stream when reading image file)", "OSError"),
    BrokenFile("apng-sequence.png", _apng_sequence_error,
               "corrupt image data (SyntaxError: APNG contains frame sequence errors)", "SyntaxError"),
    BrokenFile("truncated-end-chunk.png", _truncated_end_chunk_png, TRUNCATED, "OSError"),
)


def write_broken_files(folder: Path) -> dict[Path, str]:
    """Every broken file into `folder`; returns path -> the reason vitkit must give."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for broken in BROKEN_FILES:
        (folder / broken.name).write_bytes(broken.content())
        written[folder / broken.name] = broken.reason
    return written


def write_apple_double(path: Path) -> Path:
    """A macOS `._x.jpg` resource fork: AppleDouble magic, not a JPEG, hidden by its leading dot."""
    path.write_bytes(struct.pack(">II", 0x00051607, 0x00020000) + b"Mac OS X        " + bytes(64))
    return path


# --- unusual but valid images, each with a plain RGB reference ------------------------------------


def _save_pair(folder: Path, name: str, image: Image.Image, reference: Image.Image, **options) -> tuple[Path, Path]:
    path, ref = folder / name, folder / f"{name}.reference.png"
    image.save(path, **options)
    reference.convert("RGB").save(ref)
    return path, ref


def _composited_on_white(rgba: np.ndarray) -> Image.Image:
    """Reference compositing for alpha 0 or 255 only, where it is exact."""
    alpha = rgba[..., 3:4] == 255
    return Image.fromarray(np.where(alpha, rgba[..., :3], 255).astype(np.uint8), "RGB")


def _binary_alpha(seed: int, size: int = 24) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rgba = rng.integers(0, 256, (size, size, 4), dtype=np.uint8)
    rgba[..., 3] = np.where(rng.random((size, size)) < 0.5, 0, 255)
    return rgba


def cmyk_jpeg(folder: Path) -> tuple[Path, Path]:
    path = folder / "cmyk.jpg"
    pattern(32, 24, seed=1).convert("CMYK").save(path, quality=95)
    reference = folder / "cmyk.jpg.reference.png"
    with Image.open(path) as image:  # Pillow's own CMYK -> RGB of the decoded file
        image.convert("RGB").save(reference)
    return path, reference


def grey16_png(folder: Path) -> tuple[Path, Path]:
    grey = np.asarray(pattern(32, 24, seed=2).convert("L"))
    return _save_pair(folder, "grey16.png", Image.fromarray(grey.astype(np.uint16) * 257), Image.fromarray(grey, "L"))


def palette_transparent_png(folder: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(3)
    palette = rng.integers(0, 256, (16, 3), dtype=np.uint8)
    indices = rng.integers(0, 16, (24, 32), dtype=np.uint8)
    image = Image.fromarray(indices, "P")
    image.putpalette(palette.tobytes())
    reference = np.where((indices == 0)[..., None], 255, palette[indices]).astype(np.uint8)
    return _save_pair(folder, "palette.png", image, Image.fromarray(reference, "RGB"), transparency=0)


def rgba_png(folder: Path) -> tuple[Path, Path]:
    rgba = _binary_alpha(4)
    return _save_pair(folder, "rgba.png", Image.fromarray(rgba, "RGBA"), _composited_on_white(rgba))


def la_png(folder: Path) -> tuple[Path, Path]:
    rgba = _binary_alpha(5)
    la = np.stack([rgba[..., 0], rgba[..., 3]], axis=-1)
    grey_rgba = np.concatenate([np.repeat(la[..., :1], 3, axis=-1), la[..., 1:]], axis=-1)
    return _save_pair(folder, "la.png", Image.fromarray(la, "LA"), _composited_on_white(grey_rgba))


def one_bit_png(folder: Path) -> tuple[Path, Path]:
    bits = np.random.default_rng(6).random((24, 32)) < 0.5
    return _save_pair(folder, "one-bit.png", Image.fromarray(bits), Image.fromarray(np.where(bits, 255, 0).astype(np.uint8), "L"))


def _frames(seed: int) -> list[Image.Image]:
    return [pattern(32, 24, seed=seed + i, colours=8) for i in range(3)]


def animated_gif(folder: Path) -> tuple[Path, Path]:
    frames = _frames(10)
    return _save_pair(folder, "animated.gif", frames[0], frames[0], save_all=True, append_images=frames[1:],
                      duration=40, loop=0)


def animated_webp(folder: Path) -> tuple[Path, Path]:
    frames = _frames(20)
    return _save_pair(folder, "animated.webp", frames[0], frames[0], save_all=True, append_images=frames[1:],
                      duration=40, lossless=True)


def multipage_tiff(folder: Path) -> tuple[Path, Path]:
    pages = _frames(30)
    return _save_pair(folder, "pages.tiff", pages[0], pages[0], save_all=True, append_images=pages[1:])


def tiny_png(folder: Path) -> tuple[Path, Path]:
    pixel = pattern(1, 1, seed=7)
    return _save_pair(folder, "one-pixel.png", pixel, pixel)


def thin_image(folder: Path, size: tuple[int, int], max_ratio: float) -> tuple[Path, Path]:
    """A thin image (e.g. 1 x 5000); its reference is the central part a model may see, `max_ratio` long."""
    from vitkit.models.backends.aspect import crop_long_side

    image = pattern(*size, seed=8)
    return _save_pair(folder, f"thin-{size[0]}x{size[1]}.png", image, crop_long_side(image, max_ratio))


UNUSUAL_IMAGES: tuple[Callable[[Path], tuple[Path, Path]], ...] = (
    cmyk_jpeg, grey16_png, palette_transparent_png, rgba_png, la_png, one_bit_png, animated_gif, animated_webp,
    multipage_tiff, tiny_png,
)


# --- EXIF ------------------------------------------------------------------------------------------

# How to store an image so that a viewer applying EXIF `orientation` shows the original (the inverse of
# the EXIF rule for each value; 2, 3, 4, 5 and 7 are their own inverses).
_STORE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def oriented_png(folder: Path, orientation: int, displayed: Image.Image) -> Path:
    """`displayed`, stored turned so that EXIF `orientation` turns it back; checked against Pillow's exif_transpose."""
    stored = displayed.transpose(_STORE_FOR_ORIENTATION[orientation]) if orientation > 1 else displayed
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    path = folder / f"orientation-{orientation}.png"
    stored.save(path, exif=exif.tobytes())
    with Image.open(path) as check:
        assert np.array_equal(np.asarray(ImageOps.exif_transpose(check).convert("RGB")), np.asarray(displayed))
    return path


MALFORMED_EXIF = {
    # Not TIFF data at all: Pillow's getexif() raises.
    "garbage-exif.png": ("PNG", b"Exif\x00\x00garbage"),
    # A TIFF header whose first directory offset points far past the end: Pillow warns and reads nothing.
    "bad-offset-exif.jpg": ("JPEG", b"Exif\x00\x00II*\x00\xff\xff\xff\x7f"),
}


def malformed_exif(folder: Path, name: str) -> tuple[Path, Path]:
    fmt, exif = MALFORMED_EXIF[name]
    path, reference = folder / name, folder / f"{name}.reference.png"
    pattern(32, 24, seed=9).save(path, fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's complaint about the EXIF is the point of this file
        with Image.open(path) as image:
            image.convert("RGB").save(reference)  # the pixels as stored
    return path, reference


# --- names -----------------------------------------------------------------------------------------

HOSTILE_NAMES = ("<script>alert(1)<!--.jpg", "<img src=x onerror=alert(1)>.jpg", "=HYPERLINK(\"x\").jpg", "+1-2.jpg", "@sum.jpg",
                 "-minus.jpg", "emoji-\U0001F408.jpg", "tab\there.jpg", "quote\"'.jpg")
NON_UTF8_NAME = b"latin1-\xe9t\xe9.jpg"  # Latin-1 bytes, undecodable as UTF-8


def write_hostile_names(folder: Path, source: Path) -> list[str]:
    """Copies of `source` under awkward names (plus one that is not UTF-8); returns the names as os.listdir gives."""
    folder.mkdir(parents=True, exist_ok=True)
    data = source.read_bytes()
    for name in HOSTILE_NAMES:
        (folder / name).write_bytes(data)
    with open(os.path.join(os.fsencode(folder), NON_UTF8_NAME), "wb") as handle:
        handle.write(data)
    return sorted(os.listdir(folder))


# --- format identification, containers, codecs ------------------------------------------------------


def ico_with_png(png: bytes, width: int = 0, height: int = 0) -> bytes:
    """An ICO holding one PNG; its directory claims width x height (0 means 256), whatever the PNG says."""
    entry = struct.pack("<BBBBHHII", width % 256, height % 256, 0, 0, 1, 32, len(png), 6 + 16)
    return struct.pack("<HHH", 0, 1, 1) + entry + png


def ico_that_tga_claims(folder: Path) -> tuple[Path, Path]:
    """A valid ICO whose first bytes also pass TGA's header check (TGA has no signature): the embedded PNG's
    length puts 1 in the byte TGA reads as its bit depth. Once TGA's plugin is registered ahead of ICO's
    (any .tga opened or saved first), Pillow opens this as a TGA and fails to load it."""
    from PIL import TgaImagePlugin

    image = pattern(150, 150, seed=15)
    png = encoded(image, "PNG")
    assert 1 << 16 <= len(png) < 2 << 16, len(png)  # the length's third byte is TGA's depth: 1
    data = ico_with_png(png, 150, 150)
    TgaImagePlugin.TgaImageFile(io.BytesIO(data))  # raises if TGA's check would refuse it
    path, reference = folder / "claimed-by-tga.ico", folder / "claimed-by-tga.ico.reference.png"
    path.write_bytes(data)
    image.save(reference)
    return path, reference


def tga(folder: Path, name: str = "plain.tga") -> Path:
    path = folder / name
    pattern(24, 16, seed=16).save(path)
    return path


BOMB_ICO_SIDE = 15_000  # 225 MP: between the 179 MP limit and twice it, where Pillow alone only warns


def ico_with_huge_png(folder: Path) -> Path:
    """A 16x16 ICO whose embedded PNG is 15000 x 15000 1-bit pixels: about 30 KB on disk, 225 MB once
    decoded by Pillow and 900 MB as RGB. The ICO's header says 16x16, so only the embedded image's own
    header shows the size."""
    side = BOMB_ICO_SIDE
    compressor = zlib.compressobj(9)
    row = b"\0" + b"\xaa" * (side // 8)  # filter byte, then 1-bit pixels
    body = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    png = PNG_SIGNATURE + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b"")
    path = folder / "huge-inside.ico"
    path.write_bytes(ico_with_png(png, 16, 16))
    return path


def mixed_formats(folder: Path) -> list[Path]:
    """Four formats in name order, the ICO that TGA's check claims third: unsharded, the TGA is decoded
    before it; in `--shard 1/2` it is not."""
    folder.mkdir(parents=True, exist_ok=True)
    first = tga(folder, "a.tga")
    pattern(20, 20, seed=17).save(folder / "b.png")
    ico, reference = ico_that_tga_claims(folder)
    ico.rename(folder / "c.ico")
    reference.unlink()
    pattern(20, 20, seed=18, colours=8).save(folder / "d.gif")
    return [first, folder / "b.png", folder / "c.ico", folder / "d.gif"]


def colour_key_png(folder: Path, mode: str) -> tuple[Path, np.ndarray]:
    """A PNG with a tRNS colour key (no alpha channel) in `mode` ("RGB", "L", "1" or "P"); returns the
    RGB pixels expected once the keyed colour is composited on white."""
    rng = np.random.default_rng(19)
    if mode == "RGB":
        pixels = rng.integers(0, 4, (12, 10, 3), dtype=np.uint8) * 80
        key = (80, 160, 0)
        image = Image.fromarray(pixels, "RGB")
        expected = np.where(np.all(pixels == key, axis=-1)[..., None], 255, pixels)
    elif mode == "L":
        grey = rng.integers(0, 4, (12, 10), dtype=np.uint8) * 80
        key = 160
        image, expected = Image.fromarray(grey, "L"), np.where(grey == key, 255, grey)[..., None].repeat(3, -1)
    elif mode == "1":
        bits = rng.random((12, 10)) < 0.5
        key = 0  # black is transparent: every pixel ends white
        image, expected = Image.fromarray(bits), np.full((12, 10, 3), 255)
    else:
        indices = rng.integers(0, 4, (12, 10), dtype=np.uint8)
        palette = np.array([[200, 0, 0], [0, 200, 0], [0, 0, 200], [9, 9, 9]], dtype=np.uint8)
        key = 2
        image = Image.fromarray(indices, "P")
        image.putpalette(palette.tobytes())
        expected = np.where((indices == key)[..., None], 255, palette[indices])
    path = folder / f"colour-key-{mode}.png"
    image.save(path, transparency=key)
    with Image.open(path) as check:
        assert "transparency" in check.info and check.mode == mode, (check.mode, check.info)
    return path, expected.astype(np.uint8)


def tiff_with_compression(folder: Path, compression: int, name: str) -> Path:
    """A deflate TIFF whose Compression tag is rewritten to `compression` (the data stays deflate)."""
    data = encoded(pattern(16, 16, seed=20), "TIFF", compression="tiff_adobe_deflate")
    tag = struct.pack("<HHI", 259, 3, 1)
    position = data.index(tag + struct.pack("<HH", 8, 0))
    path = folder / name
    path.write_bytes(data[:position] + tag + struct.pack("<HH", compression, 0) + data[position + 12:])
    return path


def tiff_that_libtiff_rejects(folder: Path) -> Path:
    """A deflate TIFF with zeros over the start of its data: libtiff prints its reason on stderr."""
    data = bytearray(encoded(pattern(64, 64, seed=21), "TIFF", compression="tiff_adobe_deflate"))
    data[8:40] = bytes(32)  # Pillow writes the strip right after the 8-byte header
    path = folder / "zeroed-strip.tif"
    path.write_bytes(bytes(data))
    return path


# Formats Pillow identifies by signature but cannot decode without a handler of its own (stubs).
STUB_FILES = {
    "data.grib": b"GRIB\0\0\0\x01" + bytes(64),
    "data.bufr": b"BUFR" + bytes(64),
    "data.h5": b"\x89HDF\r\n\x1a\n" + bytes(64),
    # A placeable WMF: key, handle, bounding box 0,0-1440,1440, 1440 units an inch, reserved, checksum,
    # then the standard metafile header's type and size.
    "drawing.wmf": struct.pack("<IHhhhhHIH", 0x9AC6CDD7, 0, 0, 0, 1440, 1440, 1440, 0, 0) + b"\x01\x00\x09\x00" + bytes(64),
}
EPS_FILE = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\nshowpage\n%%EOF\n"
