"""The one runner: batching, device, inference mode, autocast, OOM back-off, the fp32 rerun, progress,
failures and input order, for every task. Task files are written by the output stage meanwhile."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Iterator, Sequence

import torch

from vitkit.inputs.data import Sample, default_workers, iterate_batches, move_to_device, slice_inputs
from vitkit.inputs.decode import DecodeOptions
from vitkit.inputs.discover import InputItem
from vitkit.errors import InputError
from vitkit.inputs.pixels import DeviceNormalize, split_normalize
from vitkit.models.acceleration import available_cores
from vitkit.models.loading import LoadedModel
from vitkit.outputs.artifacts import OutputStage
from vitkit.outputs.records import Record
from vitkit.runtime.options import GPU_BATCH_FACTOR, RunOptions  # noqa: F401 (defined without torch; re-exported)
from vitkit.runtime.report import Reporter
from vitkit.tasks.base import Task


# Threads that render and write task files; encoders and decoders release the GIL, so they overlap
# with the model and with each other.
MAX_OUTPUT_THREADS = 4


def run(task: Task, items: Sequence[InputItem], options: RunOptions = RunOptions(),
        reporter: Reporter | None = None) -> Iterator[Record]:
    """Stream one record per input, in input order; a failed input yields an error record in its own slot."""
    reporter = reporter or Reporter(quiet=True)
    decode_options = DecodeOptions(task.draft_size if options.draft else None, options.max_pixels)
    preprocess, normalize = split_normalize(task.preprocess)
    workers = default_workers(task.model.device.type == "cpu") if options.workers is None else options.workers
    batch_size = options.batch_size_for(task.model.device)
    batches = iterate_batches(items, preprocess, batch_size, workers, decode_options,
                              pin_memory=task.model.device.type == "cuda", collate_inputs=task.collate_inputs)
    inference = BatchInference(task, reporter, normalize)
    # Files of up to two batches wait to be written while the model runs on.
    stage: OutputStage[Sample] = OutputStage(min(MAX_OUTPUT_THREADS, available_cores()), 2 * batch_size)
    reporter.start(len(items))
    try:
        for batch in batches:
            ok_samples = batch.ok_samples
            results = iter(inference(batch.inputs, ok_samples) if ok_samples else [])
            for sample in batch.samples:
                stage.submit(sample, next(results) if sample.ok else None)
            yield from _records(stage.ready(), reporter)
        yield from _records(stage.drain(), reporter)
    finally:
        stage.close()
        reporter.stop()
        batches.close()


def _records(results: Iterator[tuple[Sample, Any]], reporter: Reporter) -> Iterator[Record]:
    for sample, fields in results:
        reporter.advance(1)
        if not sample.ok:
            reporter.input_failed(sample.path, sample.error or "failed", sample.error_kind)
            yield Record(sample.path, error=sample.error, error_kind=sample.error_kind)
            continue
        if fields is None:
            fields = InputError(OUT_OF_MEMORY, kind="out of memory")
        if isinstance(fields, InputError):  # e.g. its own output file could not be made
            reporter.input_failed(sample.path, fields.message, fields.kind)
            yield Record(sample.path, error=fields.message, error_kind=fields.kind)
            continue
        for note in sample.warnings:
            reporter.warn(sample.path, note)
        yield Record(sample.path, sample.width, sample.height, fields, warnings=sample.warnings)


OUT_OF_MEMORY = "out of GPU memory, even alone in a batch"
REGROW_AFTER_BATCHES = 8


class BatchInference:
    """Collated inputs of ok samples -> what postprocess made of each (record fields, Artifacts, an
    InputError: the task failed that one input), or None: the sample alone does not fit on the device.

    Two recoveries a long GPU run needs: a batch whose reduced-precision outputs are not finite runs
    again in fp32; a batch that runs out of device memory is split in halves, down to single
    images, and later batches start at the size that fitted. Both warn once per run.
    """

    def __init__(self, task: Task, reporter: Reporter, normalize: DeviceNormalize | None = None) -> None:
        self.task = task
        self.reporter = reporter
        self.normalize = normalize
        self.max_batch: int | None = None  # set by the first out-of-memory: the largest size known to fit
        self.batches_since_out_of_memory = 0
        self.warned_non_finite = False

    def __call__(self, inputs: Any, samples: list[Sample]) -> list[Any]:
        size = self.max_batch or len(samples)
        results: list[Any] = []
        for start in range(0, len(samples), size):
            stop = start + size
            results += self._fitting(slice_inputs(inputs, start, stop) if size < len(samples) else inputs,
                                     samples[start:stop])
        self._maybe_regrow()
        return results

    def _maybe_regrow(self) -> None:
        """One huge image (a padded detection batch, say) must not leave the rest of a long run at a
        batch of 1: after a stretch without out-of-memory errors, try twice the size again."""
        if self.max_batch is None:
            return
        self.batches_since_out_of_memory += 1
        if self.batches_since_out_of_memory >= REGROW_AFTER_BATCHES:
            self.max_batch *= 2
            self.batches_since_out_of_memory = 0

    def _fitting(self, inputs: Any, samples: list[Sample]) -> list[Any]:
        try:
            return self.infer(inputs, samples)
        except torch.OutOfMemoryError:  # torch.cuda.OutOfMemoryError is the same class
            pass  # leave the except block first, so the traceback lets go of the failed batch's tensors
        if self.task.model.device.type == "cuda":
            torch.cuda.empty_cache()
        if len(samples) == 1:
            return [None]
        half = (len(samples) + 1) // 2
        if self.max_batch is None:
            self.reporter.message(f"warning: out of GPU memory with a batch of {len(samples)}; "
                                  f"retrying it in halves and running smaller batches from now on")
        self.max_batch = min(self.max_batch or half, half)
        self.batches_since_out_of_memory = -1  # this batch does not count towards growing again
        return (self._fitting(slice_inputs(inputs, 0, half), samples[:half])
                + self._fitting(slice_inputs(inputs, half, len(samples)), samples[half:]))

    def infer(self, inputs: Any, samples: list[Sample]) -> list[Any]:
        model = self.task.model
        device_inputs = move_to_device(inputs, model.device)
        outputs = forward_batch(self.task, device_inputs, model.dtype, self.normalize)
        if model.dtype != torch.float32 and has_non_finite(outputs):
            if not self.warned_non_finite:
                self.warned_non_finite = True
                self.reporter.message(f"warning: {model.precision} gave non-finite outputs for a batch; "
                                      "reran it in fp32 (this run warns once)")
            outputs = forward_batch(self.task, device_inputs, torch.float32, self.normalize)
        with torch.inference_mode():
            fields = self.task.postprocess(outputs, samples)
        if len(fields) != len(samples):
            raise RuntimeError(f"{type(self.task).__name__}.postprocess returned {len(fields)} results for {len(samples)} inputs")
        return fields


def forward_batch(task: Task, inputs: Any, dtype: torch.dtype, normalize: DeviceNormalize | None = None) -> Any:
    """The one place a task's forward runs: inputs already on the device, uint8 pixels normalised
    there (see vitkit/inputs/pixels.py), inference mode, autocast to `dtype` unless it is fp32."""
    with torch.inference_mode():
        if normalize is not None:
            inputs = normalize(inputs)
        with autocast_for(task.model.device, dtype):
            return task.forward(inputs)


@contextlib.contextmanager
def model_context(model: LoadedModel, dtype: torch.dtype | None = None) -> Iterator[None]:
    """Inference mode and autocast (to the model's dtype unless `dtype` says otherwise) for the model
    calls a task makes outside `forward`, once per run or per query: label or prompt embeddings,
    text queries. The same context forward_batch gives every batch."""
    with torch.inference_mode(), autocast_for(model.device, model.dtype if dtype is None else dtype):
        yield


def has_non_finite(outputs: Any) -> bool:
    """Any NaN or infinity in the floating-point tensors of a task's outputs (tensors, dicts such as
    transformers' ModelOutput, lists, tuples and dataclasses of them)."""
    if isinstance(outputs, torch.Tensor):
        return outputs.is_floating_point() and not bool(torch.isfinite(outputs).all())
    if isinstance(outputs, dict):
        return any(has_non_finite(value) for value in outputs.values())
    if isinstance(outputs, (list, tuple)):
        return any(has_non_finite(value) for value in outputs)
    if dataclasses.is_dataclass(outputs) and not isinstance(outputs, type):
        return any(has_non_finite(getattr(outputs, f.name)) for f in dataclasses.fields(outputs))
    return False


def autocast_for(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
