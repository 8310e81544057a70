"""The output stage: a task's files (overlays, masks, composites, grids) made and written off the model
loop, each input's all or none, with records handed back in input order.

`postprocess` turns tensors into record fields on the thread that feeds the model; anything slow that
only makes files (decoding the original again at full size, drawing, PNG/JPEG encoding, writing) is
an `Artifacts.render` that runs here, on a small thread pool, while the model runs the next batches.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Generic, Iterator, Mapping, Sequence, TypeVar

from vitkit.errors import InputError, OutputError
from vitkit.outputs.files import atomic_write_path, output_errors

if TYPE_CHECKING:
    from PIL import Image

T = TypeVar("T")
Fields = dict[str, Any]


@dataclass(frozen=True)
class ImageFile:
    """One file an input's record names: `field` gets the path once the file is written."""

    field: str
    target: Path
    image: Image.Image  # or anything with its save(fp, **options), such as an array written as .npy
    options: Mapping[str, Any]  # Pillow save options, "format" included


@dataclass(frozen=True)
class Artifacts:
    """An ok input's record fields, completed by files: `render()` runs in the output stage and returns
    the images to write. Fields named by the files keep their place in `fields` if already there
    (a None placeholder keeps the record's key order), else come last."""

    fields: Fields
    render: Callable[[], Sequence[ImageFile]]


def file_outputs(write: Callable[..., T], *args: Any) -> T | InputError:
    """`write(*args)`, which makes one input's own output files, or the InputError that fails that input alone:
    its file may have changed since it was read, or be a size the output format cannot hold. An
    OutputError (disk full, unwritable folder) would fail every input alike, so it still stops the run."""
    try:
        return write(*args)
    except (OutputError, BrokenPipeError):
        raise
    except InputError as exc:  # decoding the original again for drawing on it
        return exc
    except Exception as exc:  # noqa: BLE001 - Pillow's encoders raise OSError, ValueError, SystemError...
        reason = (str(exc).strip().splitlines() or [""])[0]
        return InputError(f"cannot write its output: {type(exc).__name__}: {reason}", kind="output failed")


def write_files(files: Sequence[ImageFile]) -> list[Path]:
    """Write every file or none: all are encoded (in memory) before the first is written, and a write
    that fails removes the files written before it. Returns the paths written.

    Encoding first also matters on a full disk: Pillow's encoders write files with a C write() that
    ignores short writes, leaving a truncated image while reporting success; Python's own writes do not.
    """
    encoded = [(file.target, _encode(file)) for file in files]
    written: list[Path] = []
    try:
        for target, data in encoded:
            with atomic_write_path(target) as temp, output_errors(target):
                temp.write_bytes(data)
            written.append(target)
    except BaseException:
        remove_files(written)
        raise
    return written


def _encode(file: ImageFile) -> bytes:
    buffer = io.BytesIO()
    file.image.save(buffer, **file.options)
    return buffer.getvalue()


def remove_files(paths: Sequence[Path]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            os.unlink(path)


def complete(artifacts: Artifacts) -> tuple[Fields | InputError, list[Path]]:
    """Render and write one input's files: (its record fields with their paths, the files written), or
    (the InputError that fails it alone, nothing written)."""
    written: list[Path] = []

    def render_and_write() -> Fields:
        files = artifacts.render()
        written.extend(write_files(files))
        return {**artifacts.fields, **{file.field: str(file.target) for file in files}}

    result = file_outputs(render_and_write)
    return result, written


Key = TypeVar("Key")


@dataclass
class _Pending(Generic[Key]):
    key: Key
    result: Any  # the value itself, or a Future of complete()'s (value, written)


class OutputStage(Generic[Key]):
    """Results in submission order, with `Artifacts` completed by `threads` worker threads meanwhile.

    At most `max_pending` results wait (the oldest is waited for beyond that), which bounds the memory
    that images waiting to be written hold. An exception from completing one (an OutputError: the disk
    is full) is raised when its turn comes, after every result before it has been handed back.
    """

    def __init__(self, threads: int, max_pending: int) -> None:
        self.threads = max(1, threads)
        self.max_pending = max(1, max_pending)
        self._queue: collections.deque[_Pending[Key]] = collections.deque()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    def submit(self, key: Key, result: Any) -> None:
        if isinstance(result, Artifacts):
            if self._executor is None:  # only runs that make files start threads
                self._executor = concurrent.futures.ThreadPoolExecutor(self.threads, "vitkit-output")
            result = self._executor.submit(complete, result)
        self._queue.append(_Pending(key, result))

    def ready(self) -> Iterator[tuple[Key, Any]]:
        """The results done so far, in order, waiting only while more than `max_pending` are queued."""
        while self._queue and (len(self._queue) > self.max_pending or _is_done(self._queue[0].result)):
            yield self._pop()

    def drain(self) -> Iterator[tuple[Key, Any]]:
        while self._queue:
            yield self._pop()

    def _pop(self) -> tuple[Key, Any]:
        pending = self._queue[0]
        result = pending.result
        if isinstance(result, concurrent.futures.Future):
            result = result.result()[0]
        self._queue.popleft()
        return pending.key, result

    def close(self) -> None:
        """Stop early (an error, or a reader that stopped reading): files made for results never handed
        back are removed, so every file on disk belongs to a record that was."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
        for pending in self._queue:
            result = pending.result
            if isinstance(result, concurrent.futures.Future) and result.done() and not result.cancelled() \
                    and result.exception() is None:
                remove_files(result.result()[1])
        self._queue.clear()


def _is_done(result: Any) -> bool:
    return not isinstance(result, concurrent.futures.Future) or result.done()
