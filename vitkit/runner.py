"""The one runner: batching, device, inference mode, autocast, progress, failures and input order."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from vitkit.data import Batch, iterate_batches, move_to_device
from vitkit.decode import DEFAULT_MAX_PIXELS, DecodeOptions
from vitkit.discover import InputItem
from vitkit.records import Record
from vitkit.report import Reporter
from vitkit.tasks.base import Task


@dataclass(frozen=True)
class RunOptions:
    batch_size: int = 16
    workers: int | None = None  # None: a default suited to this machine
    draft: bool = True  # reduced-scale JPEG decoding when the model input is much smaller than the image
    max_pixels: int = DEFAULT_MAX_PIXELS


def run(task: Task, items: Sequence[InputItem], options: RunOptions = RunOptions(),
        reporter: Reporter | None = None) -> Iterator[Record]:
    """Stream one record per input, in input order; a failed input yields an error record in its own slot."""
    reporter = reporter or Reporter(quiet=True)
    decode_options = DecodeOptions(task.draft_size if options.draft else None, options.max_pixels)
    batches = iterate_batches(items, task.preprocess, options.batch_size, options.workers, decode_options,
                              pin_memory=task.model.device.type == "cuda",
                              collate_inputs=getattr(task, "collate_inputs", None))
    reporter.start(len(items))
    try:
        for batch in batches:
            yield from _records_for_batch(task, batch, reporter)
            reporter.advance(len(batch.samples))
    finally:
        reporter.stop()
        batches.close()


def _records_for_batch(task: Task, batch: Batch, reporter: Reporter) -> Iterator[Record]:
    ok_samples = batch.ok_samples
    fields = iter(_infer(task, batch) if ok_samples else [])
    for sample in batch.samples:
        if not sample.ok:
            reporter.input_failed(sample.path, sample.error or "failed", sample.error_kind)
            yield Record(sample.path, error=sample.error, error_kind=sample.error_kind)
            continue
        for note in sample.warnings:
            reporter.warn(sample.path, note)
        yield Record(sample.path, sample.width, sample.height, next(fields), warnings=sample.warnings)


def _infer(task: Task, batch: Batch) -> list[dict]:
    model = task.model
    with torch.inference_mode(), autocast_for(model.device, model.dtype):
        outputs = task.forward(move_to_device(batch.inputs, model.device))
    with torch.inference_mode():
        fields = task.postprocess(outputs, batch.ok_samples)
    if len(fields) != len(batch.ok_samples):
        raise RuntimeError(f"{type(task).__name__}.postprocess returned {len(fields)} results for {len(batch.ok_samples)} inputs")
    return fields


def autocast_for(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
