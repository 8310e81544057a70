"""Files Pillow recognises but this installation cannot decode: a missing program, library or handler,
reported as "unsupported: needs ..." rather than as corrupt data."""

from __future__ import annotations

import re

from PIL import Image, ImageFile, TiffImagePlugin

from vitkit.errors import InputError

_UNSUPPORTED = "unsupported"
_LIBTIFF_MISSING_CODEC = re.compile(r"(\w[\w -]*?) compression support is not configured")


def unsupported_after_load(image: Image.Image, exc: OSError) -> InputError | None:
    """The InputError for a load() that failed for want of a handler or a program, else None."""
    if isinstance(image, ImageFile.StubImageFile):
        # Pillow identifies WMF/EMF (off Windows), GRIB, BUFR and HDF5 but decodes none of them itself.
        return InputError(f"unsupported: needs a {image.format} handler (Pillow only identifies {image.format} "
                          f"files; a plugin must register one)", kind=_UNSUPPORTED)
    if image.format == "EPS" and "ghostscript" in str(exc).lower():
        return InputError("unsupported: needs Ghostscript (the `gs` program) to render EPS/PostScript",
                          kind=_UNSUPPORTED)
    return None


def unsupported_from_messages(printed: list[str]) -> InputError | None:
    """libtiff prints the reason a codec is missing on stderr (captured per file); Pillow only raises a code."""
    for line in printed:
        match = _LIBTIFF_MISSING_CODEC.search(line)
        if match:
            return InputError(f"unsupported: needs a libtiff built with {match.group(1)} compression (this build lacks it)",
                              kind=_UNSUPPORTED)
    return None


def unsupported_tiff(path: str) -> InputError | None:
    """For a file Pillow could not identify: a TIFF whose compression Pillow has no decoder for (Pillow
    refuses it while identifying, so it would read as "not an image")."""
    try:
        with open(path, "rb") as handle:
            header = handle.read(8)
            if not header.startswith(tuple(TiffImagePlugin.PREFIXES)):
                return None
            if header[2] == 43:  # BigTIFF: a 16-byte header
                header += handle.read(8)
            directory = TiffImagePlugin.ImageFileDirectory_v2(header)
            handle.seek(directory.next)
            directory.load(handle)
            compression = directory.get(TiffImagePlugin.COMPRESSION, 1)
    except Exception:  # noqa: BLE001 - a header too broken to read is "not an image", as Pillow said
        return None
    if compression in TiffImagePlugin.COMPRESSION_INFO:
        return None
    return InputError(f"unsupported: needs a TIFF decoder for compression {compression} (Pillow has none)",
                      kind=_UNSUPPORTED)
