"""What surrounds one file's decode: Pillow's pixel check armed at vitkit's limit, Pillow's warnings
caught, and what C libraries print on stderr (libtiff: hundreds of lines naming no file) captured.
All of it becomes that file's error or warnings instead of stray lines from a worker."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import warnings
from types import TracebackType
from typing import IO, Iterator

from PIL import Image

from vitkit.runtime.report import STDERR_LOCK

MAX_STDERR_BYTES = 64 * 1024  # read back per file; libtiff repeats itself
MAX_STDERR_LINES = 3  # distinct lines kept per file; the rest are counted
# fd 2 is the process's: two threads redirecting it at once could leave it pointing at a sink for good,
# and vitkit's own messages from another thread must not land in the sink (they wait for this lock).
_REDIRECT_LOCK = STDERR_LOCK


@contextlib.contextmanager
def pillow_guarded(max_pixels: int) -> Iterator[list[warnings.WarningMessage]]:
    """Pillow's own check armed at `max_pixels`, so it also guards what vitkit never sees the header of:
    an ICO's or ICNS's embedded PNG, TIFF tiles, GIF and MPO frames. Pillow only warns between 1x and
    2x its limit; that warning is raised here, so the limit is `max_pixels` exactly."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield caught
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def bomb_size(exc: BaseException) -> tuple[tuple[int, int] | None, bool]:
    """(width, height) Pillow's pixel check refused, and whether it was the file's outer image (checked
    by Image.open) rather than an embedded image or frame; (None, False) when it cannot be told."""
    frames = []
    traceback: TracebackType | None = exc.__traceback__
    while traceback is not None:
        frames.append(traceback.tb_frame)
        traceback = traceback.tb_next
    for position, frame in enumerate(frames):
        if frame.f_code.co_name == "_decompression_bomb_check":
            size = frame.f_locals.get("size")
            caller = frames[position - 1].f_code.co_name if position else ""
            if isinstance(size, tuple) and len(size) == 2 and all(isinstance(v, int) for v in size):
                return (size[0], size[1]), caller == "_open_core"
    return None, False


class _Sink:
    """One temporary file per process (a forked worker gets its own: a shared offset would mix files)."""

    pid: int | None = None
    file: IO[bytes] | None = None

    @classmethod
    def get(cls) -> IO[bytes]:
        if cls.pid != os.getpid() or cls.file is None:
            cls.file, cls.pid = tempfile.TemporaryFile(prefix="vitkit-stderr-"), os.getpid()
        return cls.file


@contextlib.contextmanager
def c_stderr_captured() -> Iterator[list[str]]:
    """File descriptor 2 redirected while the block runs; yields a list filled, on exit, with what C
    code printed there (distinct lines, at most MAX_STDERR_LINES and a count of the rest). Lines with
    terminal control characters (a progress bar redrawing from its thread) go on to the real stderr."""
    lines: list[str] = []
    if not _REDIRECT_LOCK.acquire(blocking=False):  # another thread is capturing: decode uncaptured
        yield lines
        return
    try:
        try:
            sink = _Sink.get()
            saved = os.dup(2)
        except OSError:  # no stderr at all, or no temp dir: nothing to capture, decode anyway
            yield lines
            return
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read(MAX_STDERR_BYTES).decode("utf-8", errors="replace")
            sink.seek(0)
            sink.truncate()
            lines.extend(_captured_lines(text))
    finally:
        _REDIRECT_LOCK.release()


def _captured_lines(text: str) -> list[str]:
    distinct: list[str] = []
    passthrough = []
    for raw in text.splitlines():
        if "\x1b" in raw or "\r" in raw:
            passthrough.append(raw)
            continue
        line = " ".join(raw.split())
        if line and line not in distinct:
            distinct.append(line)
    if passthrough:
        with contextlib.suppress(OSError):
            os.write(2, ("\n".join(passthrough) + "\n").encode())
    kept = distinct[:MAX_STDERR_LINES]
    if len(distinct) > MAX_STDERR_LINES:
        kept.append(f"(and {len(distinct) - MAX_STDERR_LINES} more different lines)")
    return kept
