"""One job builder per image command: options in, a `Job` (loaded model, task, inputs, sinks) out.

The library's functions (api.py) iterate these jobs and the CLI's commands execute them, so a
command and its function share every default and every check.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Sequence

from vitkit.errors import UsageError
from vitkit.models.registry import (ASK, ATTENTION, CAPTION, CLASSIFY, DEPTH, DETECT, EMBED, INPAINT, LABEL, POSE, SEGMENT,
                                    TRANSFORMERS)
from vitkit.pipeline import BatchOptions, InputOptions, Job, Listing, ModelOptions, collect_inputs, make_job
from vitkit.runtime.report import Reporter

if TYPE_CHECKING:
    from vitkit.models.loading import LoadedModel
    from vitkit.tasks.base import Task
    from vitkit.tasks.detect import DetectTask

def check_threshold(value: float | None, probability: bool) -> None:
    """The one check of a score threshold, for every command and function: a number, and within 0..1
    where the score is a probability. A cosine floor may lie outside -1..1 (nothing, or everything, passes)."""
    if value is None:
        return
    if not math.isfinite(value):
        raise UsageError(f"threshold must be a finite number, not {value}")
    if probability and not 0.0 <= value <= 1.0:
        raise UsageError(f"threshold {value:g} is not a probability", hint="give a number from 0 to 1")


def plan_classify(inputs: InputOptions, model: ModelOptions, batch: BatchOptions, *, top_k: int = 5,
                  html: str | None = None) -> Job:
    from vitkit.tasks.classify import ClassifyTask

    found = collect_inputs(inputs)
    return make_job(ClassifyTask(model.load(CLASSIFY), top_k), found, batch.run_options(), html=html)


def plan_label(inputs: InputOptions, model: ModelOptions, batch: BatchOptions, *,
               labels: str | Sequence[str] | None = None, labels_file: str | None = None,
               template: Sequence[str] | None = None, templates: str | None = None, multi_label: bool = False,
               threshold: float | None = None, top_k: int = 5, html: str | None = None) -> Job:
    from vitkit.tasks.zeroshot import ZeroShotTask, resolve_labels, resolve_templates

    check_threshold(threshold, probability=False)  # a sigmoid probability (SigLIP) or a cosine (CLIP)
    joined = labels if labels is None or isinstance(labels, str) else ",".join(labels)
    names, prompts = resolve_labels(joined, labels_file), resolve_templates(template, templates)
    found = collect_inputs(inputs)
    task = ZeroShotTask(model.load(LABEL), names, prompts, top_k, multi_label, threshold)
    return make_job(task, found, batch.run_options(), html=html)


def plan_embed(inputs: InputOptions, model: ModelOptions, batch: BatchOptions, *, output: str | None = None,
               dtype: str = "float32", raw: bool = False, html: str | None = None,
               vectors_in_records: bool = True) -> Job:
    """Records carry `embedding` for the library; the command line's do not (its records are text), so
    there the vectors must go to an `output` file, and its records carry their `row` in it instead."""
    from vitkit.outputs.embeddings import DTYPES, EmbeddingFile, check_embedding_output
    from vitkit.tasks.embed import ImageEmbedTask

    if output or not vectors_in_records:
        check_embedding_output(output, dtype)  # before the model loads: a bad name fails at once
    elif dtype not in DTYPES:
        raise UsageError(f"dtype must be float32 or float16, not {dtype!r}")
    found = collect_inputs(inputs)
    task = ImageEmbedTask(model.load(EMBED), raw)
    sinks = [EmbeddingFile(output, dtype, task.dim, keep_vectors=vectors_in_records)] if output else []
    return make_job(task, found, batch.run_options(), sinks, html)


def plan_detect(inputs: InputOptions, model: ModelOptions, batch: BatchOptions, *, threshold: float | None = None,
                classes: str | Sequence[str] | None = None, max_detections: int | None = None,
                out_dir: str | None = None, coco: str | None = None, masks: bool = False,
                mask_model: "str | LoadedModel | None" = None, html: str | None = None,
                prompt: str | Sequence[str] | None = None, prompts_file: str | None = None,
                negative: str | Sequence[str] | None = None) -> Job:
    """`threshold` None: 0.7 for DETR, the family's default for open-vocabulary models (hf_openvocab)."""
    from vitkit.evaluation.coco import CocoResultsSink
    from vitkit.models.registry import DEFAULT_OPEN_VOCABULARY_DETECT_MODEL, DEFAULT_SEGMENT_MODELS
    from vitkit.tasks.detect import DetectOptions
    from vitkit.tasks.detect_openvocab import detect_task, listed_texts, read_prompts

    check_threshold(threshold, probability=True)
    listed = classes.split(",") if isinstance(classes, str) else classes or ()
    options = DetectOptions(0.7 if threshold is None else threshold, tuple(c.strip() for c in listed if c.strip()),
                            max_detections, out_dir, batch.max_pixels)
    if mask_model is not None and not masks:
        raise UsageError("--mask-model only applies with --masks", hint="add --masks")
    prompts, negatives = read_prompts(prompt, prompts_file), listed_texts(negative)
    if negatives and not prompts:
        raise UsageError("--negative only applies with --prompt", hint='add --prompt "what to find"')
    found = collect_inputs(inputs)
    sam = replace(model, model=mask_model).load(SEGMENT, DEFAULT_SEGMENT_MODELS["prompt"]) if masks else None
    detector = model.load(DETECT, DEFAULT_OPEN_VOCABULARY_DETECT_MODEL if prompts else None)
    task = detect_task(detector, options, prompts, negatives, threshold, found.paths, sam)
    sinks = [CocoResultsSink(coco, task.id2label)] if coco else []
    return make_job(task, found, batch.run_options(default_batch_size=4), sinks, html)


def plan_segment(inputs: InputOptions, model: ModelOptions, batch: BatchOptions, *, mode: str = "semantic",
                 prompt: Sequence[str] | str | None = None, out_dir: str | None = None, alpha: float = 0.5,
                 instances: bool = False, min_area: int = 0, point: Sequence[str] | str | None = None,
                 box: str | Sequence[float] | None = None, all_masks: bool = False, html: str | None = None,
                 auto: dict[str, float | int | None] | None = None) -> Job:
    """`auto`: --mode auto's settings (AutoMaskOptions' fields); None values take their defaults."""
    from vitkit.models.registry import DEFAULT_SEGMENT_MODELS
    from vitkit.tasks.segment import AUTO, PROMPT, SegmentOptions, SegmentTask

    prompts = (prompt,) if isinstance(prompt, str) else tuple(prompt or ())
    options = SegmentOptions(mode, prompts, out_dir, alpha, instances, min_area, batch.max_pixels)
    points = (point,) if isinstance(point, str) else tuple(point or ())
    if mode != PROMPT and (points or box is not None or all_masks):
        raise UsageError("--point, --box and --all-masks only apply to --mode prompt", hint="add --mode prompt")
    given = {name: value for name, value in (auto or {}).items() if value is not None}
    if given and mode != AUTO:
        raise UsageError(f"--{next(iter(given)).replace('_', '-')} only applies to --mode auto", hint="add --mode auto")
    if mode == AUTO:  # a whole grid of prompts per image: one image a batch already fills the device
        from vitkit.tasks.segment_auto import AutoMaskOptions, SegmentAutoTask

        auto_options = AutoMaskOptions(**given)
        found = collect_inputs(inputs)
        task: SegmentTask = SegmentAutoTask(model.load(SEGMENT, DEFAULT_SEGMENT_MODELS[AUTO]), options, auto_options,
                                            found.paths)
        return make_job(task, found, batch.run_options(default_batch_size=1), html=html)
    if mode == PROMPT:
        from vitkit.tasks.segment_prompt import PromptSegmentTask, build_prompt

        sam_prompt = build_prompt(points, box)  # checked before any model loads
        found = collect_inputs(inputs)
        loaded = model.load(SEGMENT, DEFAULT_SEGMENT_MODELS[PROMPT])
        task = PromptSegmentTask(loaded, options, sam_prompt, all_masks, found.paths)
    else:
        found = collect_inputs(inputs)
        task = SegmentTask(model.load(SEGMENT, DEFAULT_SEGMENT_MODELS.get(mode)), options, found.paths)
    return make_job(task, found, batch.run_options(default_batch_size=4), html=html)


def plan_inpaint(inputs: InputOptions, model: ModelOptions, batch: BatchOptions, *, out_dir: str | None = None,
                 mask_ratio: float | None = None, seed: int | None = None, mask: str | None = None,
                 box: str | Sequence[float] | None = None, grid: bool = False) -> Job:
    from vitkit.tasks.inpaint import InpaintOptions, InpaintTask, parse_box

    parsed = parse_box(box if isinstance(box, str) else ",".join(map(str, box))) if box is not None else None
    options = InpaintOptions(out_dir, mask_ratio, seed, parsed, mask, grid, batch.max_pixels)
    found = collect_inputs(inputs)
    task = InpaintTask(model.load(INPAINT), options, found.paths)
    return make_job(task, found, batch.run_options(default_batch_size=8))


def plan_attention(inputs: InputOptions, model: ModelOptions, batch: BatchOptions, *, out_dir: str | None = None,
                   alpha: float = 0.6, heads: bool = False, keep_mass: float | None = None, rollout: bool = False,
                   html: str | None = None) -> Job:
    from vitkit.tasks.attention import AttentionOptions, AttentionTask

    options = AttentionOptions(out_dir, alpha, heads, keep_mass, rollout, batch.max_pixels)
    found = collect_inputs(inputs)
    task = AttentionTask(model.load(ATTENTION), options, found.paths)
    return make_job(task, found, batch.run_options(), html=html)


def plan_depth(inputs: InputOptions, model: ModelOptions, batch: BatchOptions, *, out_dir: str | None = None,
               npy: bool = False, html: str | None = None) -> Job:
    from vitkit.tasks.depth import DepthOptions, DepthTask

    options = DepthOptions(out_dir, npy)
    found = collect_inputs(inputs)
    task = DepthTask(model.load(DEPTH), options, found.paths)
    return make_job(task, found, batch.run_options(default_batch_size=4), html=html)


def plan_pose(inputs: InputOptions, model: ModelOptions, batch: BatchOptions, *,
              detector: "str | LoadedModel | None" = None, person_class: str = "person",
              person_threshold: float | None = None, boxes_from: str | None = None, whole_image: bool = False,
              kpt_threshold: float = 0.3, out_dir: str | None = None, coco: str | None = None,
              html: str | None = None) -> Job:
    """Person boxes from `detector` (default detr-r50, `person_threshold` default 0.9), from the file
    `boxes_from` (every person box in it, or those scoring at least `person_threshold` when given), or
    the whole image."""
    from vitkit.evaluation.coco import CocoKeypointsSink
    from vitkit.tasks.pose import PoseOptions, PoseTask
    from vitkit.tasks.pose_boxes import match_boxes, read_boxes_file

    check_threshold(person_threshold, probability=True)
    check_threshold(kpt_threshold, probability=True)
    if boxes_from and whole_image:
        raise UsageError("--boxes-from and --whole-image are two sources of person boxes", hint="give one")
    if detector is not None and (boxes_from or whole_image):
        raise UsageError("--detector only applies when the detector finds the people",
                         hint="drop --detector, or --boxes-from/--whole-image")
    known = read_boxes_file(boxes_from, person_class, person_threshold) if boxes_from else None  # before any model
    found = collect_inputs(inputs)
    finder = None
    if not boxes_from and not whole_image:
        finder = _person_detector(replace(model, model=detector), person_class, person_threshold)
    options = PoseOptions(kpt_threshold, out_dir, batch.max_pixels)
    task = PoseTask(model.load(POSE), options, found.paths, finder,
                    match_boxes(known, found.paths) if known is not None else None, whole_image)
    sinks = [CocoKeypointsSink(coco, task.names, task.skeleton, kpt_threshold)] if coco else []
    return make_job(task, found, batch.run_options(default_batch_size=4), sinks, html)


def _person_detector(model: ModelOptions, person_class: str, threshold: float | None) -> "DetectTask":
    """vitkit's detect task keeping only `person_class`, which pose runs on every batch first."""
    from vitkit.tasks.detect import DetectOptions, DetectTask

    loaded = model.load(DETECT)
    labels = {str(name) for name in getattr(loaded.module.config, "id2label", {}).values()}
    if person_class not in labels:
        raise UsageError(f"detector {loaded.spec.id!r} has no class {person_class!r}",
                         hint="name its person class with --person-class, or pick another --detector")
    return DetectTask(loaded, DetectOptions(0.9 if threshold is None else threshold, (person_class,)))


def plan_caption(inputs: InputOptions, model: ModelOptions, batch: BatchOptions, *, max_length: int | None = None,
                 beams: int | None = None, greedy: bool = False, prefix: str | None = None, sidecar: bool = False,
                 on_exists: str | None = None, html: str | None = None, quiet: bool = False,
                 detail: str | None = None, processor_option: Any = None) -> Job | None:
    """None when --sidecar leaves nothing to caption (outside torchrun, where every rank must still
    join the gather): no model is loaded and nothing is written."""
    from vitkit.runtime.distributed import is_launched
    from vitkit.runtime.report import Reporter
    from vitkit.tasks.caption import SidecarWriter, plan_sidecars, resolve_beams

    if on_exists and not sidecar:
        raise UsageError("--on-exists only applies with --sidecar")
    from vitkit.tasks.processor_options import parse_processor_options

    resolve_beams(beams, greedy)  # refused before any file is looked at
    processor_options = parse_processor_options(processor_option)
    if (detail is not None or processor_options) and model.backend(CAPTION) != TRANSFORMERS:
        option = "--detail" if detail is not None else "--processor-option"
        raise UsageError(f"{option} applies to vision-language models", hint="e.g. --model smolvlm-256m")
    reporter = Reporter(quiet=quiet)
    found = collect_inputs(inputs)
    if sidecar and found.names:
        raise UsageError("caption files go beside image files, and in-memory images have none", hint="pass paths")
    if sidecar:
        plan = plan_sidecars(found.items, overwrite=on_exists == "overwrite")
        found = replace(found, items=plan.items)  # keeps the names, cleanup and skipped count
        if message := plan.skipped_message():
            reporter.message(message)
        if not found.items and not is_launched():
            return None
    task = _caption_task(model.load(CAPTION), max_length, beams, greedy, prefix, detail, processor_options)
    return make_job(task, found, batch.run_options(), [SidecarWriter(reporter)] if sidecar else [], html)


def plan_ask(inputs: InputOptions, model: ModelOptions, batch: BatchOptions, *,
             question: str | Sequence[str] | None = None, questions_file: str | None = None,
             system: str | None = None, choices: str | Sequence[str] | None = None, max_new_tokens: int = 64,
             temperature: float | None = None, seed: int | None = None, keep: str | None = None,
             threshold: float | None = None, html: str | None = None, processor_option: Any = None) -> Job:
    from vitkit.tasks.ask import AskOptions, AskTask, resolve_choices, resolve_questions
    from vitkit.tasks.processor_options import parse_processor_options

    questions = resolve_questions(question, questions_file)
    names = resolve_choices(choices, keep, threshold)
    check_threshold(threshold, probability=True)
    if max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be at least 1, not {max_new_tokens}")
    if names and temperature is not None:
        raise UsageError("--temperature samples answers, and --choices scores them", hint="drop one of them")
    if seed is not None and not temperature:
        raise UsageError("--seed only applies when sampling", hint="add --temperature T (e.g. 0.7)")
    options = AskOptions(questions, system, names, max_new_tokens, temperature, seed or 0, keep,
                         0.5 if threshold is None else threshold,
                         processor_options=parse_processor_options(processor_option))
    found = collect_inputs(inputs)
    # one image a batch on a CPU: batch 8 measured no faster per image there (benchmarks/ask.py); 4 on a GPU
    return make_job(AskTask(model.load(ASK), options), found, batch.run_options(default_batch_size=1), html=html)


def _caption_task(loaded: "LoadedModel", max_length: int | None, beams: int | None, greedy: bool,
                  prefix: str | None, detail: str | None, processor_options: dict[str, Any]) -> "Task":
    """CoCa's own decoder, a task-token model's captioning task (beam search), or a vision-language model
    asked for a caption (greedy); for the last two max_length counts new tokens."""
    from vitkit.models.backends.hf import HfAssets
    from vitkit.tasks.caption import CaptionTask, resolve_beams

    if not isinstance(loaded.assets, HfAssets):  # CoCa: --detail and --processor-option were refused above
        return CaptionTask(loaded, max_length, resolve_beams(beams, greedy), prefix)
    from vitkit.tasks.ask import answers_task_tokens
    from vitkit.tasks.caption_tasks import TaskTokenCaptionTask

    if answers_task_tokens(loaded.assets.processor):  # Florence-2: its own captioning tasks, by beam search
        return TaskTokenCaptionTask(loaded, detail or "brief", max_length, resolve_beams(beams, greedy), prefix,
                                    processor_options)
    from vitkit.tasks.ask import DEFAULT_MAX_NEW_TOKENS, VlmCaptionTask

    if beams not in (None, 1):
        raise UsageError("vision-language captions are decoded greedily", hint="drop --beams")
    return VlmCaptionTask(loaded, detail or "brief", max_length or DEFAULT_MAX_NEW_TOKENS, prefix, processor_options)


def run_bench(model: ModelOptions, batch: BatchOptions, *, images: int = 64, size: str = "1920x1080",
              repeats: int = 3, quiet: bool = False) -> Listing:
    """Throughput of the model alone and from JPEG files to results: the median of `repeats` timed
    passes after a warm-up, with its spread, as one row (and a summary for people)."""
    from vitkit.runtime.bench import COLUMNS, BenchOptions, parse_size, run_bench as bench
    from vitkit.runtime.distributed import refuse_launch

    refuse_launch("bench", "run it as one process, once per GPU with --device cuda:N")
    options = BenchOptions(model.model, model.device, model.precision, batch.batch_size, images, parse_size(size),
                           batch.run_options(), model.offline, model.compile, repeats=repeats)
    result = bench(options, Reporter(quiet=quiet))
    row = result.to_row()
    return Listing([{column: row.get(column) for column in COLUMNS}], summary=result.summary())


def run_eval_detect(images_dir: str, coco_gt: str, model: ModelOptions, batch: BatchOptions, *,
                    threshold: float = 0.001, quiet: bool = False) -> Listing:
    """COCO mAP@[.5:.95], AP50 and AP75 of a detector on the ground truth's images (100 detections an image)."""
    from vitkit.evaluation.detect import evaluate_detector
    from vitkit.evaluation.metrics import load_coco_ground_truth
    from vitkit.evaluation.report import evaluation_row, evaluation_warnings, render_summary
    from vitkit.runtime.distributed import refuse_launch
    from vitkit.tasks.detect import DetectOptions
    from vitkit.tasks.detect_openvocab import eval_detect_task

    refuse_launch("eval detect", "run it as one process; `vitkit detect` runs under torchrun")
    check_threshold(threshold, probability=True)
    ground_truth = load_coco_ground_truth(coco_gt)
    detector, options = model.load(DETECT), DetectOptions(threshold=threshold, max_detections=100)
    task = eval_detect_task(detector, options, [ground_truth.categories[i] for i in sorted(ground_truth.categories)])
    reporter = Reporter(quiet=quiet)
    result = evaluate_detector(task, ground_truth, images_dir, batch.run_options(default_batch_size=4), reporter)
    for warning in evaluation_warnings(result):
        reporter.message(warning)
    return Listing([evaluation_row(result)], result.failed_images, summary=render_summary(result))

