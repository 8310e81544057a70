"""Perceptual hashes for the `near` tier of dedup: imagehash's pHash of each image as displayed.

Computed during dedup for the candidate pairs only (pairs the embeddings already put close), not stored
in the index: a confirmed `near` pair must pass the embedding floor anyway, so hashing the rest would be
wasted decoding, and the index schema stays as it is. The image is decoded like any input (EXIF orientation
applied), so a copy rotated by an EXIF tag hashes like its original.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from vitkit.errors import InputError

# pHash sees a 32 x 32 grey image; decoding a JPEG at a reduced scale above this loses nothing it uses.
DECODE_SIZE = 128
HASH_THREADS = 4  # decoding releases the GIL
# Bits of 64 that may differ for `near`. Measured on sample_data/: re-encoding (JPEG q=60) and 50% resizes
# differ by 0-2 bits, EXIF-rotated copies by 0, 5% crops (one side or centred) by 4-16; distinct photos
# by 28-38 (chance alone gives 32 +- 4). The embedding floor guards the margin.
NEAR_MAX_BITS = 16


def perceptual_hash(path: str) -> int | str:
    """The 64-bit pHash of the image as displayed, or why the file cannot be decoded now."""
    import imagehash

    from vitkit.inputs.decode import DecodeOptions, decode_image

    try:
        image = decode_image(path, DecodeOptions(draft_size=DECODE_SIZE)).image
    except InputError as error:
        return error.message
    bits = imagehash.phash(image).hash.flatten()  # (64,) bool
    return int(np.packbits(bits).view(">u8")[0])


class PerceptualHashes:
    """Hashes per item, computed on first need (a pool of threads per batch) and kept for the run."""

    def __init__(self, path_of: Callable[[int], str]) -> None:
        self._path_of = path_of  # item -> one file holding its content
        self._hashes: dict[int, int | None] = {}
        self.failures: dict[str, str] = {}  # path -> why it could not be hashed

    def prepare(self, items: Iterable[int]) -> None:
        missing = sorted({int(i) for i in items} - self._hashes.keys())
        if not missing:
            return
        paths = [self._path_of(item) for item in missing]
        with ThreadPoolExecutor(HASH_THREADS) as pool:
            for item, path, found in zip(missing, paths, pool.map(perceptual_hash, paths)):
                if isinstance(found, str):
                    self.failures[path] = found
                self._hashes[item] = found if isinstance(found, int) else None

    def distance(self, a: int, b: int) -> int | None:
        """Differing bits between two items' hashes; None when either could not be hashed."""
        self.prepare((a, b))
        first, second = self._hashes[int(a)], self._hashes[int(b)]
        if first is None or second is None:
            return None
        return (first ^ second).bit_count()

    def agree(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """(P,) bool: whether each pair's hashes differ by at most NEAR_MAX_BITS (a NearTest)."""
        self.prepare(np.concatenate([left, right]).tolist())
        return np.array([(d := self.distance(a, b)) is not None and d <= NEAR_MAX_BITS
                         for a, b in zip(left.tolist(), right.tolist())], dtype=bool)

    @property
    def failed(self) -> tuple[tuple[str, str], ...]:
        """(path, reason) of each file that could not be hashed, in path order."""
        return tuple(sorted(self.failures.items()))
