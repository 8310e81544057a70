"""Input discovery: files, folders, globs and path lists become one ordered list of inputs.

Order is deterministic (arguments in the order given, folder contents sorted by name) so that
reruns and shards line up. Folder scans and globs pick files by extension: every extension Pillow
registers a picture format for (vitkit.inputs.formats), and count the files they pass over. Problems found here (missing path, unreadable folder) are kept as
inputs with a `problem`, so they are reported in their place instead of silently skipped.
"""

from __future__ import annotations

import glob
import os
import sys
from dataclasses import dataclass
from typing import IO, Iterable, Iterator, Sequence

_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class InputItem:
    path: str  # as given, or joined onto the folder as given
    problem: str | None = None  # set when the path cannot even be opened as an input
    problem_kind: str = "missing"  # the error kind reported for `problem` (summary counts group by it)


class DiscoveredInputs(list):
    """The inputs, in order (a plain list of InputItem), and how many files a folder scan or a glob
    passed over because their extension names no picture format Pillow reads."""

    skipped_by_extension: int = 0


def is_image_name(name: str) -> bool:
    from vitkit.inputs.formats import picture_extensions  # imports Pillow's plugins: only when scanning

    return os.path.splitext(name)[1].lower() in picture_extensions()


def is_hidden(name: str) -> bool:
    # Covers dotfiles, .git/.vitkit folders and macOS `._x.jpg` resource forks.
    return name.startswith(".")


def discover_inputs(
    paths: Sequence[str],
    files_from: str | None = None,
    null_separated: bool = False,
    stdin: IO[str] | None = None,
) -> DiscoveredInputs:
    """Expand arguments and an optional path list into inputs, each path once, in a stable order."""
    arguments = list(paths)
    if files_from is not None:
        arguments += read_path_list(files_from, null_separated, stdin)
    seen: set[str] = set()
    items = DiscoveredInputs()
    skipped: set[str] = set()
    for item in _expand_all(arguments, skipped):
        if item.path not in seen:
            seen.add(item.path)
            items.append(item)
    items.skipped_by_extension = len(skipped - seen)
    return items


def read_path_list(source: str, null_separated: bool, stdin: IO[str] | None = None) -> list[str]:
    if source == "-":
        text = (stdin or sys.stdin).read()
    else:
        with open(source, encoding="utf-8", errors="surrogateescape", newline="") as handle:
            text = handle.read()
    parts = text.split("\0") if null_separated else text.splitlines()
    return [part for part in parts if part.strip()]


def _expand_all(arguments: Iterable[str], skipped: set[str]) -> Iterator[InputItem]:
    """Inputs for every argument; paths passed over for their extension are added to `skipped`."""
    visited_dirs: set[tuple[int, int]] = set()
    for argument in arguments:
        if os.path.isdir(argument):
            yield from _walk(argument, visited_dirs, skipped)
        elif os.path.lexists(argument):
            yield InputItem(argument)  # an explicit file is tried whatever its extension
        elif _GLOB_CHARS & set(argument):
            matches = sorted(glob.glob(argument, recursive=True))
            if not matches:
                yield InputItem(argument, "no files match this pattern")
            for match in matches:
                if os.path.isdir(match):
                    yield from _walk(match, visited_dirs, skipped)
                elif is_image_name(match):
                    yield InputItem(match)
                else:
                    skipped.add(match)
        else:
            yield InputItem(argument, "no such file or directory")


def _walk(folder: str, visited_dirs: set[tuple[int, int]], skipped: set[str]) -> Iterator[InputItem]:
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
            yield from _walk(path, visited_dirs, skipped)
        elif is_image_name(entry.name):
            yield InputItem(path)
        else:
            skipped.add(path)
