"""The writer lock: one `flock` per index folder, so only one process changes an index at a time; and
the ANN lock, held only while `ann.faiss` is written, so a search saving the ANN file it had to rebuild
never keeps a writer out (nor two saves write the same temporary file)."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from vitkit.errors import IndexLockedError

LOCK_NAME = "index.lock"
ANN_LOCK_NAME = "ann.lock"
_POLL_SECONDS = 0.05


class WriterLock:
    """Held from acquire() to release(); the kernel releases a flock however its holder dies, so a
    killed writer never leaves the index locked."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, folder: Path, wait_seconds: float = 0.0, name: str = LOCK_NAME) -> WriterLock:
        fd = os.open(folder / name, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + max(0.0, wait_seconds)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    pid = _read_pid(fd)
                    os.close(fd)
                    raise IndexLockedError(
                        f"index {folder} is locked by another vitkit process (pid {pid})",
                        hint="wait for it to finish, or pass --wait SECONDS (wait_seconds= in Python)") from None
                time.sleep(min(_POLL_SECONDS, remaining))
        # The holder's pid, for the "locked by" message another process prints.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the fd releases the flock
            self._fd = None


def _read_pid(fd: int) -> str:
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return text if text.isdigit() else "unknown"
