"""How far a reduced precision (bf16, fp16, int8) moves a classifier's answers from fp32 on the same images."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vitkit.errors import UsageError


@dataclass(frozen=True)
class PrecisionAgreement:
    images: int
    top1_agreement: float  # fraction of images whose most probable class is the same as in fp32
    max_abs_prob_diff: float  # largest |p_reduced - p_fp32| over every image and class

    def describe(self) -> str:
        return (f"top-1 agrees with fp32 on {self.top1_agreement:.1%} of {self.images} images; "
                f"largest probability difference {self.max_abs_prob_diff:.2g}")


def compare_probabilities(fp32: Any, reduced: Any) -> PrecisionAgreement:
    """(N, C) class probabilities from fp32 and from a reduced precision, same images in the same order
    (numpy arrays or tensors)."""
    reference, other = _as_array(fp32), _as_array(reduced)
    if reference.shape != other.shape or reference.ndim != 2:
        raise UsageError(f"probability arrays must both be (images, classes); got {reference.shape} and {other.shape}",
                         hint="compare the same images in the same order")
    if not len(reference):
        return PrecisionAgreement(0, 1.0, 0.0)
    agreement = float((reference.argmax(axis=1) == other.argmax(axis=1)).mean())
    return PrecisionAgreement(len(reference), agreement, float(np.abs(reference - other).max()))


def _as_array(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=np.float64)
