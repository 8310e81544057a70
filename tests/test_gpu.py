"""The CUDA path on a real GPU; every test here skips on machines without one (CI's CPU runners).

On a lent GPU machine: `python -m pytest tests/test_gpu.py` and `python benchmarks/gpu.py`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import GOOD_SAMPLES, SAMPLE_DATA, parse_jsonl
from tests.test_parity import timm_reference
from vitkit.cli import app

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
PATHS = [SAMPLE_DATA / name for name in GOOD_SAMPLES]


def classify_on_cuda(model_dir: Path, *extra: str) -> list[dict]:
    result = CliRunner().invoke(app, ["classify", *map(str, PATHS), "--model", str(model_dir), "--device", "cuda",
                                      "-k", "5", *extra])
    assert result.exit_code == 0, result.stderr
    return parse_jsonl(result.stdout)


def test_fp32_on_cuda_matches_timm_on_cpu(tiny_timm_dir: Path) -> None:
    reference = timm_reference(tiny_timm_dir, PATHS, 5)
    for record, expected in zip(classify_on_cuda(tiny_timm_dir, "--precision", "fp32"), reference, strict=True):
        assert [p["class_id"] for p in record["predictions"]] == [c for c, _ in expected]
        np.testing.assert_allclose([p["score"] for p in record["predictions"]], [s for _, s in expected], atol=1e-3)


def test_auto_precision_on_cuda_keeps_the_top_label(tiny_timm_dir: Path) -> None:
    reference = timm_reference(tiny_timm_dir, PATHS, 1)
    records = classify_on_cuda(tiny_timm_dir)  # auto: bf16 or fp16 autocast, uint8 pixels normalised on the GPU
    assert [r["predictions"][0]["class_id"] for r in records] == [e[0][0] for e in reference]
    assert all(np.isfinite(p["score"]) for r in records for p in r["predictions"])

