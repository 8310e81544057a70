"""`--shard I/N`: which contiguous slice of the inputs one process of a SLURM array or shell loop takes."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence, TypeVar

from vitkit.errors import UsageError

T = TypeVar("T")
_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Shard:
    index: int  # 0-based
    count: int


def parse_shard(text: str) -> Shard:
    match = _SHARD.match(text)
    if not match:
        raise UsageError(f"--shard {text!r} is not I/N", hint="e.g. --shard 0/4 ... --shard 3/4 (0-based)")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise UsageError(f"--shard {text}: I must be in 0..N-1 and N at least 1",
                         hint=f"for {count} shards use 0/{count} ... {max(count - 1, 0)}/{count}")
    return Shard(index, count)


def shard_bounds(total: int, shard: Shard) -> tuple[int, int]:
    """Contiguous slices whose sizes differ by at most one, so concatenating the shards' outputs in
    shard order gives the inputs' order."""
    start = shard.index * total // shard.count
    stop = (shard.index + 1) * total // shard.count
    return start, stop


def select_shard(items: Sequence[T], shard: Shard) -> list[T]:
    start, stop = shard_bounds(len(items), shard)
    return list(items[start:stop])


def apply_shard(items: Sequence[T], shard: str | None) -> list[T]:
    """The `--shard I/N` slice of `items`, or all of them without --shard."""
    return list(items) if shard is None else select_shard(items, parse_shard(shard))
