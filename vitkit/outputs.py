"""Where a task's files go: under --out-dir, mirroring the input tree, one distinct name per input and kind."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from vitkit.errors import OutputError

# Markers for path parts that cannot be mirrored as they are. '@' does not start real folder names
# in practice, and the mapping stays one-to-one either way since relative paths never begin with it.
ROOT_MARKER = "@root"
PARENT_MARKER = "@up"


class OutputPlanner:
    """Maps each input path to output paths inside `out_dir`.

    The mapping is one-to-one (same-named files in different folders never collide, `a.jpg` and
    `a.png` never collide because the input's full name is kept), it never leaves `out_dir` (absolute
    paths and `..` become marker folders), and it refuses to write over any input of the run.
    """

    def __init__(self, out_dir: str | Path, inputs: Iterable[str] = ()) -> None:
        self.out_dir = Path(out_dir)
        self._inputs = {os.path.realpath(p) for p in inputs}

    def path_for(self, input_path: str, kind: str, extension: str) -> Path:
        """e.g. ('photos/cat.jpg', 'overlay', 'png') -> OUT/photos/cat.jpg.overlay.png"""
        parts = _mirrored_parts(input_path)
        target = self.out_dir.joinpath(*parts[:-1], f"{parts[-1]}.{kind}.{extension}")
        if os.path.realpath(target) in self._inputs:
            raise OutputError(f"refusing to overwrite input {input_path} with an output",
                              hint="choose an --out-dir outside the input folders")
        return target


def _mirrored_parts(input_path: str) -> list[str]:
    path = os.path.normpath(input_path)
    drive, path = os.path.splitdrive(path)
    parts: list[str] = []
    if os.path.isabs(path):
        parts.append(ROOT_MARKER + (drive.replace(":", "") if drive else ""))
    parts += [PARENT_MARKER if part == os.pardir else part for part in path.split(os.sep) if part not in ("", os.curdir)]
    return parts


@contextlib.contextmanager
def atomic_write_path(target: Path) -> Iterator[Path]:
    """A temporary path beside `target`, renamed onto it when the block succeeds, removed if it fails."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=target.suffix or ".tmp", dir=target.parent)
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}", hint="check --out-dir is writable") from exc
    os.close(fd)
    # mkstemp makes 0600 files; outputs should get the permissions any new file would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temp, 0o666 & ~umask)
    try:
        yield Path(temp)
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
