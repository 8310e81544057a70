"""Pillow's format registry, made independent of what was opened before: the formats tried on a file, in
one fixed order, and the file extensions a folder scan picks.

Pillow imports a plugin the first time a file with its extension is opened (or saved) and puts that
format first; a format without a signature (TGA, for one) then claims files of other formats: after a
`.tga`, a valid `.ico` failed. vitkit registers every plugin before its first decode and passes an
explicit order, so a file's outcome never depends on the files before it, in any process or worker.
"""

from __future__ import annotations

import functools
import os

from PIL import Image

# Formats Pillow registers extensions for that cannot give vitkit a picture: written but never read
# (PDF, Palm), scientific data with no pixels Pillow decodes (HDF5, GRIB, BUFR: `.h5` is also Keras
# weights), and video, of which Pillow reads only the header (MPEG). README "Inputs" lists them.
NOT_PICTURES = frozenset({"PDF", "PALM", "HDF5", "GRIB", "BUFR", "MPEG"})

# Every extension accepted before the list came from Pillow: a build without a plugin (AVIF,
# JPEG 2000) still tries these files and reports why it cannot read them.
BASE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".gif", ".bmp", ".dib", ".tif", ".tiff",
    ".webp", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico", ".avif", ".jp2", ".j2k",
})


def ensure_plugins() -> None:
    """Every Pillow plugin registered (a no-op after the first call in a process)."""
    Image.init()


@functools.cache
def _ordered_formats() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(formats with a signature check, formats without one), each in Pillow's own plugin order.

    Image.ID is in import order, which depends on history; the rank of each format's plugin module in
    Pillow's list is not. Formats from other packages' plugins follow, in registration order."""
    ensure_plugins()
    plugins = [f"PIL.{name}" for name in getattr(Image, "_plugins", ())]

    def rank(item: tuple[int, str]) -> tuple[int, int]:
        position, name = item
        module = getattr(Image.OPEN[name][0], "__module__", "")
        return (plugins.index(module) if module in plugins else len(plugins), position)

    ordered = [name for _, name in sorted(enumerate(Image.ID), key=rank) if name in Image.OPEN]
    signed = tuple(name for name in ordered if Image.OPEN[name][1] is not None)
    unsigned = tuple(name for name in ordered if Image.OPEN[name][1] is None)
    return signed, unsigned


def open_order(path: str) -> tuple[str, ...]:
    """The formats to try on `path`: every format with a signature first (the bytes decide), then
    those without one (IM, IMT, IPTC, PCD, SPIDER, TGA), the one the extension names first."""
    signed, unsigned = _ordered_formats()
    named = Image.registered_extensions().get(os.path.splitext(path)[1].lower())
    if named in unsigned:
        unsigned = (named, *(name for name in unsigned if name != named))
    return signed + unsigned


@functools.cache
def picture_extensions() -> frozenset[str]:
    """Extensions a folder scan picks: every one Pillow reads a picture from, plus BASE_EXTENSIONS."""
    ensure_plugins()
    readable = {ext for ext, fmt in Image.registered_extensions().items() if fmt not in NOT_PICTURES}
    return frozenset(readable) | BASE_EXTENSIONS
