"""`--processor-option KEY=VALUE`: one of the checkpoint's own image-processor settings, changed for this
run and passed with every processor call (as transformers' model cards do: SmolVLM's
`do_image_splitting` or `size={"longest_edge": N*512}`, Qwen2-VL's pixel budget). vitkit knows no
model's settings: it checks the key against the options the image processor declares, then runs the
processor and the model (one generated token) on a blank image before any file is read, so a typo, a
wrong type or a setting the model cannot take is a usage error, not a failure on every image.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Mapping, Sequence

from vitkit.errors import UsageError

# Settings of how vitkit runs the processor, not of what it computes: vitkit sets them itself.
RUN_SETTINGS = frozenset({"return_tensors", "device", "data_format", "input_data_format", "disable_grouping"})


def parse_processor_options(given: Mapping[str, Any] | Sequence[str] | str | None) -> dict[str, Any]:
    """KEY=VALUE texts (VALUE read as JSON where it is JSON: false, 1024, {"longest_edge": 1024}; else a
    string), or a mapping from the library, -> {key: value}."""
    if given is None:
        return {}
    if isinstance(given, Mapping):
        return dict(given)
    parsed: dict[str, Any] = {}
    for text in [given] if isinstance(given, str) else given:
        key, equals, value = text.partition("=")
        if not equals or not key.strip():
            raise UsageError(f"--processor-option {text!r} is not KEY=VALUE", hint="e.g. do_image_splitting=false")
        try:
            parsed[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            parsed[key.strip()] = value
    return parsed


def with_settings(image_processor: Any, options: Mapping[str, Any]) -> Any:
    """A shallow copy of the image processor with the run's settings as its attributes, for vitkit code that
    reads the processor's own settings (the thin-image guard reads `size`); the processor itself is untouched."""
    if not options:
        return image_processor
    changed = copy.copy(image_processor)
    for key, value in options.items():
        setattr(changed, key, value)
    return changed


def run_draft_size(model: Any, options: Mapping[str, Any]) -> int | None:
    """The shorter side JPEGs may be draft-decoded to, by the run's own settings where they change the size."""
    if not options:
        return model.draft_size
    from vitkit.models.backends.hf import processor_short_side

    image_processor = getattr(model.assets.processor, "image_processor", None)
    return processor_short_side(with_settings(image_processor, options)) if image_processor is not None else None


def check_processor_options(processor: Any, options: Mapping[str, Any], prompt: str | None) -> None:
    if not options:
        return
    image_processor = getattr(processor, "image_processor", processor)
    declared = getattr(getattr(image_processor, "valid_kwargs", None), "__annotations__", None)
    for key in options:
        if key in RUN_SETTINGS:
            raise UsageError(f"--processor-option {key}: vitkit sets this itself",
                             hint="processor options change what the processor computes (size, tiling, ...)")
        if declared is not None and key not in declared:
            raise UsageError(f"--processor-option {key}: not a setting of this model's image processor",
                             hint=f"its settings: {', '.join(sorted(declared))}")
    try:
        if prompt is None:
            image_processor(images=[blank_image()], return_tensors="pt", **options)
        else:
            processor(images=[blank_image()], text=[prompt], return_tensors="pt", **options)
    except Exception as exc:  # the processor's own validation, whatever its type: one line for the user
        raise UsageError(f"--processor-option {', '.join(options)}: the image processor refused it: "
                         f"{_last_line(exc)}") from None


def check_with_model(task: Any, options: Mapping[str, Any]) -> None:
    """The task's own preprocess and collate on a blank image, then one generated token: a setting the
    processor takes but the model cannot (a resolution its vision tower or image-token count does not
    match) is refused here, once, instead of failing the run at its first batch."""
    if not options:
        return
    from vitkit.inputs.data import ImageMeta, move_to_device
    from vitkit.runtime.runner import model_context
    from vitkit.tasks.vlm_batch import model_pixels

    image = blank_image()
    batch = task.collate_inputs([task.preprocess(image, ImageMeta("blank", *image.size))])
    inputs = {key.removesuffix(".0"): value for key, value in batch.items() if "." not in key or key.endswith(".0")}
    inputs = move_to_device(model_pixels(inputs), task.model.device)
    import torch

    try:
        with model_context(task.model):
            task.model.module.generate(**inputs, max_new_tokens=1, do_sample=False)
    except torch.OutOfMemoryError:
        raise
    except Exception as exc:  # whatever the model raises about its inputs: one line for the user
        raise UsageError(f"--processor-option {', '.join(options)}: the model cannot take images prepared "
                         f"this way: {_last_line(exc)}", hint="drop the option or choose another value") from None


def blank_image() -> Any:
    from PIL import Image

    return Image.new("RGB", (64, 48), (127, 127, 127))


def _last_line(exc: Exception) -> str:
    """The reason, which upstream messages put last (after a repr of the processor or a field name)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    return lines[-1][:300]
