"""Input discovery: files, folders, globs and path lists become one ordered list of inputs.

Order is deterministic (arguments in the order given, folder contents sorted by name) so that
reruns and shards line up. Problems found here (missing path, unreadable folder) are kept as
inputs with a `problem`, so they are reported in their place instead of silently skipped.
"""

from __future__ import annotations

import glob
import os
import sys
from dataclasses import dataclass
from typing import IO, Iterable, Iterator, Sequence

IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".gif", ".bmp", ".dib", ".tif", ".tiff",
    ".webp", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico", ".avif", ".jp2", ".j2k",
})
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class InputItem:
    path: str  # as given, or joined onto the folder as given
    problem: str | None = None  # set when the path cannot even be opened as an input
    problem_kind: str = "missing"  # the error kind reported for `problem` (summary counts group by it)


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def is_hidden(name: str) -> bool:
    # Covers dotfiles, .git/.vitkit folders and macOS `._x.jpg` resource forks.
    return name.startswith(".")


def discover_inputs(
    paths: Sequence[str],
    files_from: str | None = None,
    null_separated: bool = False,
    stdin: IO[str] | None = None,
) -> list[InputItem]:
    """Expand arguments and an optional path list into inputs, each path once, in a stable order."""
    arguments = list(paths)
    if files_from is not None:
        arguments += read_path_list(files_from, null_separated, stdin)
    seen: set[str] = set()
    items: list[InputItem] = []
    for item in _expand_all(arguments):
        if item.path not in seen:
            seen.add(item.path)
            items.append(item)
    return items


def read_path_list(source: str, null_separated: bool, stdin: IO[str] | None = None) -> list[str]:
    if source == "-":
        text = (stdin or sys.stdin).read()
    else:
        with open(source, encoding="utf-8", errors="surrogateescape", newline="") as handle:
            text = handle.read()
    parts = text.split("\0") if null_separated else text.splitlines()
    return [part for part in parts if part.strip()]


def _expand_all(arguments: Iterable[str]) -> Iterator[InputItem]:
    visited_dirs: set[tuple[int, int]] = set()
    for argument in arguments:
        if os.path.isdir(argument):
            yield from _walk(argument, visited_dirs)
        elif os.path.lexists(argument):
            yield InputItem(argument)  # an explicit file is tried whatever its extension
        elif _GLOB_CHARS & set(argument):
            matches = sorted(glob.glob(argument, recursive=True))
            if not matches:
                yield InputItem(argument, "no files match this pattern")
            for match in matches:
                if os.path.isdir(match):
                    yield from _walk(match, visited_dirs)
                elif is_image_name(match):
                    yield InputItem(match)
        else:
            yield InputItem(argument, "no such file or directory")


def _walk(folder: str, visited_dirs: set[tuple[int, int]]) -> Iterator[InputItem]:
    """Depth-first, sorted by name, following folder symlinks but never entering a folder twice."""
    try:
        stat = os.stat(folder)
    except OSError as exc:
        yield InputItem(folder, f"cannot read folder: {exc.strerror or exc}", "unreadable")
        return
    identity = (stat.st_dev, stat.st_ino)
    if identity in visited_dirs:
        return  # a symlink loop or a second route to a folder already read
    visited_dirs.add(identity)
    try:
        with os.scandir(folder) as scanner:
            entries = sorted(scanner, key=lambda entry: entry.name)
    except OSError as exc:
        yield InputItem(folder, f"cannot read folder: {exc.strerror or exc}", "unreadable")
        return
    for entry in entries:
        if is_hidden(entry.name):
            continue
        path = os.path.join(folder, entry.name)
        try:
            is_dir = entry.is_dir()
        except OSError:
            is_dir = False
        if is_dir:
            yield from _walk(path, visited_dirs)
        elif is_image_name(entry.name):
            yield InputItem(path)
