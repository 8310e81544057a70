"""`vitkit detect --prompt` (and `eval detect` with an open-vocabulary model): open-vocabulary detection (OWL-ViT, OWLv2, Grounding DINO) through the
detect task, so --out-dir, --coco, --html, --max-detections and --masks work as for DETR.

Records keep detect's schema: `label` is the prompt's first name, `class_id` the prompt's index.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

from vitkit.errors import UsageError
from vitkit.models.backends.hf import HfAssets
from vitkit.models.backends.hf_openvocab import (DEFAULT_THRESHOLDS, OpenVocabularyFamily, Prompts, family_of,
                                                 needs_prompts, parse_prompts, resolve)
from vitkit.models.loading import LoadedModel
from vitkit.tasks.detect import DetectOptions, DetectTask, clip_box, ranked


@dataclass(frozen=True)
class OpenVocabOptions:
    prompts: Prompts
    threshold: float | None = None  # None: the family's default (DEFAULT_THRESHOLDS)


class OpenVocabDetectTask(DetectTask):
    def __init__(self, model: LoadedModel, options: DetectOptions, prompting: OpenVocabOptions,
                 inputs: Sequence[str] = (), mask_model: LoadedModel | None = None) -> None:
        self.prompting = prompting
        super().__init__(model, options, inputs, mask_model)

    def _check_detector(self, model: LoadedModel, options: DetectOptions) -> Any:
        if not isinstance(model.assets, HfAssets) or not needs_prompts(model.module):
            raise UsageError(f"model {model.spec.id!r} detects a fixed set of classes and takes no prompts",
                             hint="pick among its classes with --classes, or use an open-vocabulary model "
                                  "(--model owlv2-b)")
        if options.classes:
            raise UsageError("--classes picks among a fixed-vocabulary model's classes",
                             hint="with an open-vocabulary model, name what to find with --prompt")
        family = family_of(model.module.config, model.spec.id)
        threshold = self.prompting.threshold
        self.options = replace(options, threshold=DEFAULT_THRESHOLDS[family] if threshold is None else threshold)
        self.processor = model.assets.processor
        self.id2label = dict(enumerate(self.prompting.prompts.labels))
        self.family = OpenVocabularyFamily(family, self.processor, self.prompting.prompts.names, self.options.threshold)
        self.family.check_length(model.module.config)
        return model.assets.image_processor

    def _run_detector(self, inputs: dict[str, Any]) -> Any:
        return self.family.detect(self.model.module, inputs)

    def _found(self, outputs: Any, sizes: Sequence[tuple[int, int]]) -> list[list[dict[str, Any]]]:
        found = []
        for candidates, (height, width) in zip(self.family.candidates(outputs, sizes), sizes):
            # Overlaps are judged on the boxes the records show: inside the image.
            clipped = [replace(c, box=tuple(clip_box(c.box, width, height))) for c in candidates]
            detections = [{"label": self.id2label[prompt], "class_id": prompt, "score": candidate.score,
                           "box": list(candidate.box)} for prompt, candidate in resolve(clipped, self.prompting.prompts)]
            found.append(ranked(detections, self.options.max_detections))
        return found


def detect_task(detector: LoadedModel, options: DetectOptions, prompts: tuple[str, ...],
                negatives: tuple[str, ...], threshold: float | None, paths: Sequence[str],
                sam: LoadedModel | None) -> DetectTask:
    if not needs_prompts(detector.module):
        if prompts:
            raise UsageError(f"model {detector.spec.id!r} detects a fixed set of classes and takes no --prompt",
                             hint="pick among its classes with --classes, or use an open-vocabulary model "
                                  "(--model owlv2-b)")
        return DetectTask(detector, options, paths, sam)
    if not prompts:
        raise UsageError(f"model {detector.spec.id!r} detects what it is told to find: give --prompt",
                         hint='e.g. --prompt "red car" --prompt person, or --prompts-file FILE (one a line)')
    prompting = OpenVocabOptions(parse_prompts(prompts, negatives), threshold)
    return OpenVocabDetectTask(detector, options, prompting, paths, sam)


def listed_texts(value: str | Sequence[str] | None) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value or ())


def read_prompts(prompt: str | Sequence[str] | None, prompts_file: str | None) -> tuple[str, ...]:
    """--prompt values, then the prompts file's non-empty lines (UTF-8, one prompt a line)."""
    prompts = listed_texts(prompt)
    if prompts_file is None:
        return prompts
    try:
        with open(prompts_file, encoding="utf-8") as stream:
            lines = tuple(line.strip() for line in stream if line.strip())
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot read --prompts-file {prompts_file!r}: {error}") from None
    if not lines:
        raise UsageError(f"--prompts-file {prompts_file!r} has no prompts", hint="write one prompt a line")
    return prompts + lines


def eval_detect_task(detector: LoadedModel, options: DetectOptions, categories: Sequence[str]) -> DetectTask:
    """An open-vocabulary detector is prompted with the ground truth's category names, each as it is."""
    if not needs_prompts(detector.module):
        return DetectTask(detector, options)
    prompts = Prompts(tuple(categories), tuple(categories), tuple(range(len(categories))), frozenset())
    return OpenVocabDetectTask(detector, options, OpenVocabOptions(prompts, options.threshold))
