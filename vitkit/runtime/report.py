"""Progress and messages on stderr. Progress only on a terminal; `quiet` silences everything but fatal errors."""

from __future__ import annotations

import sys
import threading
from collections import Counter
from typing import IO

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


# Held while a decoder has file descriptor 2 redirected to catch C libraries' messages (inputs/guard.py)
# and while a message is printed: a message from another thread would otherwise land in that capture,
# lost from the terminal and taken for the decoded file's own warning.
STDERR_LOCK = threading.RLock()


class Reporter:
    def __init__(self, quiet: bool = False, progress: bool | None = None, stream: IO[str] | None = None,
                 prefix: str = "") -> None:
        stream = stream or sys.stderr
        self.prefix = prefix  # e.g. "[rank 1] " under torchrun, where several processes share stderr
        self.console = Console(file=stream, highlight=False, soft_wrap=True)
        self.quiet = quiet
        self.show_progress = (not quiet) and (stream.isatty() if progress is None else progress)
        self.failures: Counter[str] = Counter()
        self.total = 0
        self.skipped_by_extension = 0  # files a folder scan passed over (see vitkit.inputs.discover)
        self._progress: Progress | None = None
        self._task_id = None

    def start(self, total: int, description: str = "images") -> None:
        self.total = total
        if self.show_progress:
            self._progress = Progress(
                TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                console=self.console, transient=True,
            )
            self._progress.start()
            self._task_id = self._progress.add_task(description, total=total)

    def advance(self, count: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._task_id, count)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def input_failed(self, path: str, reason: str, kind: str | None) -> None:
        self.failures[kind or "failed"] += 1
        self.message(f"error: {path}: {reason}")

    def warn(self, path: str, message: str) -> None:
        self.message(f"warning: {path}: {message}")

    def message(self, text: str) -> None:
        if not self.quiet:
            with STDERR_LOCK:
                self.console.print(escape(self.prefix + text), markup=True)

    def summary_line(self) -> str | None:
        failed = sum(self.failures.values())
        n_skipped = self.skipped_by_extension
        skipped = (f"{n_skipped} file{'s' if n_skipped != 1 else ''} skipped by extension (name one to try it)"
                   if n_skipped else "")
        if not failed:
            return f"{self.total} input{'s' if self.total != 1 else ''} processed; {skipped}" if skipped else None
        reasons = ", ".join(f"{count} {kind}" for kind, count in self.failures.most_common())
        line = f"{failed} of {self.total} inputs failed ({reasons}); the others were processed"
        return f"{line}; {skipped}" if skipped else line

    def print_summary(self) -> None:
        line = self.summary_line()
        if line:
            self.message(line)
