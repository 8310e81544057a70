"""Where a task's files go: under --out-dir, mirroring the input tree, one distinct name per input and kind."""

from __future__ import annotations

import contextlib
import errno
import os
import stat as stat_module
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


_NO_SPACE = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)
NO_SPACE = "no space"
NOT_WRITABLE = "not writable"


def get_write_failure_kind(exc: OSError) -> str | None:
    """NO_SPACE (disk full, file too large, quota), NOT_WRITABLE (permissions, read-only filesystem) or None;
    the one place where an errno decides which hint a failed write gets."""
    if exc.errno in _NO_SPACE:
        return NO_SPACE
    if exc.errno in _NOT_WRITABLE:
        return NOT_WRITABLE
    return None


@contextlib.contextmanager
def output_errors(target: str | os.PathLike) -> Iterator[None]:
    """OSErrors while writing `target` (disk full, file too large, read-only folder) become an OutputError
    that names it. A broken pipe passes through: the CLI ends quietly when a reader goes away."""
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as exc:
        kind = get_write_failure_kind(exc)
        if kind == NO_SPACE:
            hint = "free some space (or write elsewhere) and run again; earlier outputs are unchanged"
        elif kind == NOT_WRITABLE:
            hint = "check the folder's permissions (or write elsewhere)"
        else:
            hint = "check that the folder exists and is writable"
        raise OutputError(f"cannot write {os.fsdecode(target)}: {exc.strerror or exc}", hint=hint) from exc


def _is_special(target: Path) -> bool:
    try:
        return not stat_module.S_ISREG(os.stat(target).st_mode)
    except OSError:
        return False  # missing (or unreachable): created as a regular file, or failing with a clear error


@contextlib.contextmanager
def atomic_write_path(target: Path) -> Iterator[Path]:
    """A temporary path beside `target`, renamed onto it when the block succeeds, removed if it fails.

    A target that exists but is not a regular file (/dev/stdout, /dev/null, a FIFO) is written in place:
    renaming over it would replace the device or pipe with a file. A symlink keeps pointing where it did:
    the file it points to is replaced. Errors from the block are the caller's to describe (see
    `output_errors`): the block may do more than write.
    """
    if _is_special(target):
        yield target
        return
    real = Path(os.path.realpath(target)) if target.is_symlink() else target
    with output_errors(target):
        try:
            real.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError as exc:  # the parent is a file; "File exists" would mislead
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR)) from exc
        fd, temp = tempfile.mkstemp(prefix=f".{real.name}.", suffix=real.suffix or ".tmp", dir=real.parent)
    try:
        with output_errors(target):
            os.close(fd)
            # mkstemp makes 0600 files; outputs should get the permissions any new file would.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(temp, 0o666 & ~umask)
        yield Path(temp)
        with output_errors(target):
            os.replace(temp, real)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
