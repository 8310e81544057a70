"""`--processor-option KEY=VALUE`: one of the checkpoint's own image-processor settings, changed for this
run and passed with every processor call (as transformers' model cards do: SmolVLM's
`do_image_splitting` or `size={"longest_edge": N*512}`, Qwen2-VL's pixel budget). vitkit knows no
model's settings: it checks the key against the options the image processor declares and tries the
setting on one blank image before any file is read, so a typo or a wrong type is a usage error, not an
error on every image.
"""

from __future__ import annotations

import copy
import json
from typing import Any, Mapping, Sequence

from vitkit.errors import UsageError


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


def check_processor_options(processor: Any, options: Mapping[str, Any], prompt: str | None) -> None:
    if not options:
        return
    image_processor = getattr(processor, "image_processor", processor)
    declared = getattr(getattr(image_processor, "valid_kwargs", None), "__annotations__", None)
    for key in options:
        if declared is not None and key not in declared:
            raise UsageError(f"--processor-option {key}: not a setting of this model's image processor",
                             hint=f"its settings: {', '.join(sorted(declared))}")
    from PIL import Image

    blank = Image.new("RGB", (64, 48), (127, 127, 127))
    try:
        if prompt is None:
            image_processor(images=[blank], return_tensors="pt", **options)
        else:
            processor(images=[blank], text=[prompt], return_tensors="pt", **options)
    except Exception as exc:  # the processor's own validation, whatever its type: one line for the user
        reason = " ".join(str(exc).split())[:300]
        raise UsageError(f"--processor-option {', '.join(options)}: the image processor refused it: {reason}") from None
