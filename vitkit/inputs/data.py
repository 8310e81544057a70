"""The one batched image dataloader: decode and preprocess in worker processes, failures kept in their slots."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from vitkit.models.acceleration import available_cores
from vitkit.inputs.decode import DecodeOptions, decode_image
from vitkit.inputs.discover import InputItem
from vitkit.errors import InputError



@dataclass(frozen=True)
class ImageMeta:
    """What preprocess knows of an input besides its pixels, which may be a draft-reduced decode."""

    path: str
    width: int  # as displayed (EXIF orientation applied), at full resolution
    height: int


# (PIL RGB image, its ImageMeta) -> model inputs (a tensor, or a dict of tensors); must be picklable.
Preprocess = Callable[[Any, ImageMeta], Any]
Collate = Callable[[list[Any]], Any]  # preprocess results of a batch -> batched inputs; must be picklable


@dataclass(frozen=True)
class ImagePreprocess:
    """A Preprocess for a transform that needs only the pixels (timm, open_clip, a processor call).
    Its `transform` field lets the uint8 split (vitkit/inputs/pixels.py) shorten the transform inside."""

    transform: Callable[[Any], Any]

    def __call__(self, image: Any, meta: ImageMeta) -> Any:
        return self.transform(image)


@dataclass(frozen=True)
class Sample:
    """One input's place in the run. `inputs` is dropped once batched; `error` set means it failed."""

    index: int
    path: str
    width: int | None = None
    height: int | None = None
    inputs: Any = None
    error: str | None = None
    error_kind: str | None = None
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Batch:
    samples: tuple[Sample, ...]  # every input of the batch, in input order, without pixel data
    inputs: Any  # collated inputs of the ok samples only, in the same order; None if none are ok

    @property
    def ok_samples(self) -> list[Sample]:
        return [s for s in self.samples if s.ok]


class ImageDataset(Dataset):
    def __init__(self, items: Sequence[InputItem], preprocess: Preprocess, decode_options: DecodeOptions) -> None:
        self.items = list(items)
        self.preprocess = preprocess
        self.decode_options = decode_options

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        item = self.items[index]
        if item.problem:
            return Sample(index, item.path, error=item.problem, error_kind=item.problem_kind)
        try:
            decoded = decode_image(item.path, self.decode_options)
            inputs = self.preprocess(decoded.image, ImageMeta(item.path, decoded.width, decoded.height))
        except InputError as exc:
            return Sample(index, item.path, error=exc.message, error_kind=exc.kind)
        except Exception as exc:  # noqa: BLE001 - one file's failure, whatever it is, never the run's
            reason = (str(exc).strip().splitlines() or [""])[0]
            return Sample(index, item.path, error=f"cannot preprocess: {type(exc).__name__}: {reason}",
                          error_kind="preprocess failed")
        return Sample(index, item.path, decoded.width, decoded.height, inputs, warnings=decoded.warnings)


class SampleCollator:
    """Collates the ok samples' inputs (with a task's own function, e.g. padding, or torch's default)
    and keeps every sample's slot. A class rather than a closure so it pickles into workers."""

    def __init__(self, collate_inputs: Collate | None = None) -> None:
        self.collate_inputs = collate_inputs or default_collate

    def __call__(self, samples: list[Sample]) -> Batch:
        ok_inputs = [s.inputs for s in samples if s.ok]
        inputs = self.collate_inputs(ok_inputs) if ok_inputs else None
        return Batch(tuple(replace(s, inputs=None) for s in samples), inputs)


def default_workers(model_on_cpu: bool = True) -> int:
    """Decode processes for a run. With the model on a 2-core CPU, none: the model's matmuls already
    keep both cores busy, and a worker only interleaves with them, adding its start-up and IPC
    (ViT-S/16 on 2 MP JPEGs: 0 workers as fast as 1 or 2 in fp32, 5-15% faster in bf16). Feeding a
    GPU, or with more cores, workers decode while the model computes. Each worker runs one torch
    thread (DataLoader sets that), so they never multiply the model's thread count."""
    cores = available_cores()
    if cores <= 2:
        return 0 if model_on_cpu or cores == 1 else 2
    return min(8, cores - 1)


def iterate_batches(
    items: Sequence[InputItem],
    preprocess: Preprocess,
    batch_size: int,
    workers: int | None = None,
    decode_options: DecodeOptions = DecodeOptions(),
    pin_memory: bool = False,
    collate_inputs: Collate | None = None,
) -> Iterator[Batch]:
    """Batches in input order. Worker count is capped by the number of batches: no idle processes."""
    dataset = ImageDataset(items, preprocess, decode_options)
    n_batches = -(-len(dataset) // batch_size)
    workers = min(default_workers() if workers is None else workers, n_batches)
    loader: Iterable[Batch] = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=SampleCollator(collate_inputs),
        pin_memory=pin_memory,
        prefetch_factor=2 if workers > 0 else None,
        persistent_workers=False,
    )
    yield from loader


def map_tensors(inputs: Any, function: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """`function` applied to every tensor in collated inputs (a tensor, or dicts, lists and tuples of them)."""
    if isinstance(inputs, torch.Tensor):
        return function(inputs)
    if isinstance(inputs, dict):
        return {key: map_tensors(value, function) for key, value in inputs.items()}
    if isinstance(inputs, (list, tuple)):
        return type(inputs)(map_tensors(value, function) for value in inputs)
    return inputs


def move_to_device(inputs: Any, device: torch.device) -> Any:
    return map_tensors(inputs, lambda tensor: tensor.to(device, non_blocking=True))


def slice_inputs(inputs: Any, start: int, stop: int) -> Any:
    """Samples start..stop of collated inputs: every tensor's dim 0 is the sample (padded batches too)."""
    return map_tensors(inputs, lambda tensor: tensor[start:stop])
