"""Safe image decoding: any file in, an RGB image as displayed (EXIF orientation applied) or an InputError out."""

from __future__ import annotations

import errno
import math
import os
import stat as stat_module
import warnings
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, UnidentifiedImageError

from vitkit.errors import InputError
from vitkit.inputs.formats import ensure_plugins, open_order
from vitkit.inputs.guard import bomb_size, c_stderr_captured, pillow_guarded
from vitkit.inputs.unsupported import unsupported_after_load, unsupported_from_messages, unsupported_tiff

# Pillow's own hard limit (twice its warning threshold): about 179 MP, or 537 MB of RGB pixels.
DEFAULT_MAX_PIXELS = 2 * 89_478_485
MAX_PIXELS_FLAG = "--max-pixels"
DRAFT_REDUCING_GAP = 2.0
WHITE = (255, 255, 255)
_EXIF_ORIENTATION = 0x0112
_TRANSPOSE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@dataclass(frozen=True)
class DecodeOptions:
    draft_size: int | None = None  # shorter side the model needs; large JPEGs decode at a reduced scale above it
    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # RGB; may be smaller than width x height when draft decoding applied
    width: int  # of the image as displayed (after EXIF orientation), at full resolution
    height: int
    warnings: tuple[str, ...] = ()


def decode_image(path: str, options: DecodeOptions = DecodeOptions()) -> DecodedImage:
    """Decode one file; every failure is an InputError whose message is the reason, for one line of output."""
    _check_file(path)
    ensure_plugins()  # the same complete format registry in every process, before any file is opened
    printed: list[str] = []
    try:
        with pillow_guarded(options.max_pixels) as caught, c_stderr_captured() as printed, \
                Image.open(path, formats=open_order(path)) as image:
            decoded = _decode_open_image(image, options)
        notes = _warning_notes(caught, decoded.warnings) + tuple(f"decoder warning: {line}" for line in printed)
        return replace(decoded, warnings=decoded.warnings + notes)
    except InputError:
        raise
    except UnidentifiedImageError as exc:
        raise unsupported_tiff(path) or InputError("not an image Pillow can read (unknown or corrupt format)",
                                                   kind="not an image") from exc
    except MemoryError as exc:
        raise InputError("out of memory while decoding", kind="too large") from exc
    except Exception as exc:  # noqa: BLE001 - Pillow's plugins raise almost anything on hostile data (OSError,
        # SyntaxError, ValueError, struct.error, ZeroDivisionError...); each is this file's failure, never the run's.
        raise _describe_decode_failure(exc, printed, options.max_pixels) from exc


def _check_file(path: str) -> None:
    try:
        stat = os.stat(path)
    except FileNotFoundError as exc:
        raise InputError("no such file (or a broken link)", kind="missing") from exc
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror or exc}", kind="unreadable") from exc
    if not stat_module.S_ISREG(stat.st_mode):
        raise InputError("not a regular file", kind="not an image")
    if stat.st_size == 0:
        raise InputError("empty file (0 bytes)", kind="empty")
    if not os.access(path, os.R_OK):
        raise InputError("cannot read: permission denied", kind="unreadable")


def _decode_open_image(image: Image.Image, options: DecodeOptions) -> DecodedImage:
    width, height = image.size
    if width * height > options.max_pixels:
        raise InputError(
            f"{width}x{height} pixels is over the {options.max_pixels:,}-pixel limit (decompression-bomb guard); "
            f"raise it with {MAX_PIXELS_FLAG}",
            kind="too large",
        )
    drafted = False
    if options.draft_size and image.format == "JPEG":
        # JPEG decodes at 1/2, 1/4 or 1/8 scale almost for free. Pillow picks the smallest scale that
        # still covers the requested size; asking for twice what the model needs (the reducing gap
        # Pillow's own thumbnail() uses) leaves a real antialiased resize to finish the job.
        # Pillow's draft() also switches libjpeg to its fast upsampling, even at scale 1, so it is
        # called only when a real reduction (1/2 or less) follows.
        scale = DRAFT_REDUCING_GAP * options.draft_size / min(width, height)
        wanted = (math.ceil(width * scale), math.ceil(height * scale))
        drafted = min(width // wanted[0], height // wanted[1]) >= 2
        if drafted:
            image.draft(image.mode, wanted)
    # Pixels before metadata: reading a PNG's EXIF decodes it, and an error there must be the file's
    # error, not a "malformed EXIF" note followed by a second load that keeps the rows decoded so far.
    try:
        image.load()
    except OSError as exc:
        raise unsupported_after_load(image, exc) or exc
    if not drafted:  # an ICO's embedded image may differ from its directory's size: the pixels decide
        width, height = image.size
    notes: list[str] = []
    orientation = _read_orientation(image, notes)
    rgb = to_rgb(image)
    if orientation in _TRANSPOSE_FOR_ORIENTATION:
        rgb = rgb.transpose(_TRANSPOSE_FOR_ORIENTATION[orientation])
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return DecodedImage(rgb, width, height, tuple(notes))


def _read_orientation(image: Image.Image, notes: list[str]) -> int:
    try:
        # Pillow only warns (on stderr, from a worker) about some corrupt EXIF; it becomes this file's warning.
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - malformed EXIF must never cost the image
        notes.append("malformed EXIF data ignored; using the pixels as stored")
        return 1
    if not isinstance(orientation, int) or not 1 <= orientation <= 8:
        notes.append(f"invalid EXIF orientation {orientation!r} ignored; using the pixels as stored")
        return 1
    return orientation


_COLOUR_KEY_MODES = ("1", "L", "I", "I;16", "I;16L", "I;16B", "I;16N", "RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB for every Pillow mode: transparency composited on white, 16-bit scaled (not clipped) to 8-bit.
    The result never carries a `transparency` key: it has been applied."""
    if image.mode in _COLOUR_KEY_MODES and "transparency" in image.info:
        return _colour_key_on_white(image)
    rgb = _to_rgb(image)
    if rgb is not image:
        rgb.info.pop("transparency", None)
    return rgb


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit greyscale (PNG/TIFF) arrives as I;16 or I; 65535 / 257 = 255 maps the full range.
        pixels = np.asarray(image, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode == "F":
        pixels = np.asarray(image, dtype=np.float64)
        if np.nanmax(pixels, initial=0.0) <= 1.0:
            pixels = pixels * 255.0
        pixels = np.nan_to_num(pixels, nan=0.0, posinf=255.0, neginf=0.0)
        return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        if image.mode == "RGB":
            return image
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        if image.mode == "La":  # premultiplied grey: Pillow converts it to LA and nothing else
            image = image.convert("LA")
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode == "L" and "transparency" in image.info:
        return _to_rgb(image.convert("LA"))
    return image.convert("RGB")


def _colour_key_on_white(image: Image.Image) -> Image.Image:
    """A PNG tRNS colour key on grey or RGB (not a palette): pixels of exactly that value are fully
    transparent, so they become white and every other pixel keeps its colour."""
    key = image.info["transparency"]
    plain = image.copy()
    plain.info.pop("transparency")
    rgb = np.array(_to_rgb(plain))
    pixels = np.asarray(image)
    if image.mode == "RGB":
        if not (isinstance(key, (tuple, list)) and len(key) == 3):
            return Image.fromarray(rgb, "RGB")  # not a colour key Pillow documents: nothing to apply
        if max(key) > 255:  # a 16-bit PNG: Pillow keeps the high byte of each sample and the full key
            key = tuple(int(value) >> 8 for value in key)
        clear = np.all(pixels == np.asarray(key, dtype=pixels.dtype), axis=-1)
    elif image.mode == "1":
        clear = pixels == bool(key)
    else:
        clear = pixels == key
    rgb[clear] = WHITE
    return Image.fromarray(rgb, "RGB")


# errnos that mean the file or the disk under it failed; any other errno at decode time (EINVAL from a
# seek to an offset the header made up, EFBIG, EOVERFLOW...) is bad data, not a disk error.
_DISK_ERRNOS = frozenset(getattr(errno, name) for name in (
    "EIO", "EACCES", "EPERM", "ESTALE", "ENXIO", "ENODEV", "ETIMEDOUT", "ENOTCONN", "EHOSTDOWN", "EHOSTUNREACH",
    "ECONNRESET", "ECONNABORTED", "EAGAIN", "EINTR", "ENOMEDIUM", "EREMOTEIO", "EBADF") if hasattr(errno, name))


def _describe_decode_failure(exc: BaseException, printed: list[str], max_pixels: int) -> InputError:
    # The file changed after _check_file, or the disk failed: the OS's reason, not the image's. Pillow's
    # decoder errors are OSErrors too, but never carry an errno.
    if isinstance(exc, FileNotFoundError):
        return InputError("no such file (or a broken link)", kind="missing")
    if isinstance(exc, OSError) and exc.errno in _DISK_ERRNOS:
        return InputError(f"cannot read: {exc.strerror or os.strerror(exc.errno)}", kind="unreadable")
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return _bomb_failure(exc, max_pixels)
    unsupported = unsupported_from_messages(printed)
    if unsupported is not None:
        return unsupported
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, OSError) and exc.errno is not None:
        text = exc.strerror or os.strerror(exc.errno)
    elif text.startswith("decoder error") and printed:  # libtiff said why on stderr; Pillow gives a code
        text = f"{text}, {printed[0]}"
    if "truncated" in text.lower() or isinstance(exc, EOFError):
        return InputError("truncated image data (file cut short)", kind="truncated")
    return InputError(f"corrupt image data ({type(exc).__name__}: {text})", kind="corrupt")


def _bomb_failure(exc: BaseException, max_pixels: int) -> InputError:
    size, outer = bomb_size(exc)
    if size is None:
        text = str(exc).strip() or type(exc).__name__
        return InputError(f"{text}; raise the limit with {MAX_PIXELS_FLAG}", kind="too large")
    what = f"{size[0]}x{size[1]} pixels" if outer else f"an embedded image or frame of {size[0]}x{size[1]} pixels"
    return InputError(f"{what} is over the {max_pixels:,}-pixel limit (decompression-bomb guard); "
                      f"raise it with {MAX_PIXELS_FLAG}", kind="too large")


def _warning_notes(caught: list[warnings.WarningMessage], already: tuple[str, ...]) -> tuple[str, ...]:
    notes: list[str] = []
    for warning in caught:
        if not issubclass(warning.category, UserWarning):  # deprecations are for vitkit's developers, not its users
            continue
        text = " ".join(str(warning.message).split())
        # e.g. "Corrupt EXIF data. Expecting to read 12 bytes but only got 2.": Pillow skipped that part.
        note = f"malformed EXIF data ignored ({text})" if "exif" in text.lower() else f"decoder warning: {text}"
        if note not in notes and note not in already:
            notes.append(note)
    return tuple(notes)
