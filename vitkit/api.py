"""The library: one function per command, with the command's options as keyword arguments.

    import vitkit
    for record in vitkit.classify("photos/", model="vit-s16", top_k=3):
        print(record.path, record.predictions[0].label)

Inputs are paths, folders (recursive), globs, PIL images or a list of them. The model loads when the
function is called (a bad reference or option raises a `VitkitError` then); records come lazily, one
per input in input order. A file that cannot be used yields its `{path, error}` record in its own
place: no function raises for one bad file. Every function also takes the options shared by all
commands (`Options` below), with the command line's defaults. Error messages name an option as the
command line spells it (`--top-k` for `top_k=`), so one message serves both.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence, TypedDict, Unpack

from vitkit import jobs
from vitkit.retrieval import jobs as retrieval_jobs
from vitkit.errors import UsageError
from vitkit.outputs.records import Fields, Record
from vitkit.pipeline import BatchOptions, InputOptions, Job, ModelOptions, Source, iterate, split_options

if TYPE_CHECKING:
    from vitkit.models.loading import LoadedModel


class Options(TypedDict, total=False):
    """Keyword arguments every function takes, as the flags of the same names (defaults in brackets)."""

    model: "str | LoadedModel | None"  # alias, library reference, local folder, or vitkit.load_model's result [the command's default]
    device: str  # auto, cpu, cuda, cuda:N, mps [auto]
    precision: str  # auto, fp32, fp16, bf16, int8 [auto]
    offline: bool  # never contact the Hugging Face Hub [False]
    compile: bool  # torch.compile the model [False]
    batch_size: int | None  # [the command's own: 16; detect, segment, depth and pose 4, inpaint 8; 4x on a GPU]
    workers: int | None  # decoding processes [suited to this machine]
    draft: bool  # reduced-scale JPEG decoding where the model needs far fewer pixels [True]
    max_pixels: int  # larger images are that input's error [178956970]
    files_from: str | None  # also read paths from this file, one a line; "-" reads stdin [None]
    null: bool  # files_from is NUL-separated [False]
    shard: str | None  # "I/N": only that contiguous slice of the inputs [None]
    quiet: bool  # no progress, warnings or per-file error lines on stderr [False]


def _records(plan: Callable[..., Job | None], inputs: Source | Sequence[Source] | None, options: dict[str, Any],
             **own: Any) -> Iterator[Record]:
    quiet = options.pop("quiet", False)
    found, model, batch = split_options(options, InputOptions, ModelOptions, BatchOptions)
    return iterate(plan(replace(found, inputs=inputs), model, batch, **own), quiet)


def classify(inputs: Source | Sequence[Source] | None = None, *, top_k: int = 5, html: str | None = None,
             **options: Unpack[Options]) -> Iterator[Record]:
    """Top-k labels per image (default model vit-b16): `record.predictions[i].label, .class_id, .score`."""
    return _records(jobs.plan_classify, inputs, dict(options), top_k=top_k, html=html)


def label(inputs: Source | Sequence[Source] | None = None, *, labels: str | Sequence[str] | None = None,
          labels_file: str | None = None, template: Sequence[str] | None = None, templates: str | None = None,
          multi_label: bool = False, threshold: float | None = None, top_k: int = 5, html: str | None = None,
          **options: Unpack[Options]) -> Iterator[Record]:
    """Zero-shot labels against `labels` (a list, or 'cat,dog'), default model clip-b32:
    `record.predictions[i].label, .score`."""
    return _records(jobs.plan_label, inputs, dict(options), labels=labels, labels_file=labels_file,
                    template=template, templates=templates, multi_label=multi_label, threshold=threshold,
                    top_k=top_k, html=html)


def embed(inputs: Source | Sequence[Source] | None = None, *, output: str | None = None, dtype: str = "float32",
          raw: bool = False, html: str | None = None, **options: Unpack[Options]) -> Iterator[Record]:
    """Image embeddings from any timm or open_clip model (default dino-s16; clip-b32 for the index's
    space): `record.embedding` is the model's pooled vector as float32 numpy, unit length (compare by
    dot product) unless `raw`. With `output` ('emb.npy', beside it 'emb.jsonl'; or 'emb.parquet') the
    vectors are also written there in `dtype`, one row per ok input in input order, and
    `record.row` is its row. The file is written when the records are used up."""
    from vitkit.runtime.distributed import is_launched

    if output and is_launched():
        raise UsageError("vitkit.embed(output=...) writes one file per process under torchrun",
                         hint="run `vitkit embed ... -o FILE` under torchrun: rank 0 writes every rank's rows")
    return _records(jobs.plan_embed, inputs, dict(options), output=output, dtype=dtype, raw=raw, html=html)


def detect(inputs: Source | Sequence[Source] | None = None, *, threshold: float | None = None,
           classes: str | Sequence[str] | None = None, max_detections: int | None = None, out_dir: str | None = None,
           coco: str | None = None, masks: bool = False, mask_model: "str | LoadedModel | None" = None,
           html: str | None = None, prompt: str | Sequence[str] | None = None, prompts_file: str | None = None,
           negative: str | Sequence[str] | None = None, **options: Unpack[Options]) -> Iterator[Record]:
    """Objects per image (default model detr-r50): `record.detections[i].label, .score, .box` (x0, y0,
    x1, y1 in original-image pixels); annotated images in `out_dir`, a COCO results file at `coco`.
    `masks`: each detection's box segmented by SAM (`mask_model`, default sam-b), `.mask` a COCO RLE.
    `prompt`: what to find, with an open-vocabulary model (default owlv2-b); "car|automobile" is one
    label; `negative` names things whose boxes suppress overlapping prompted boxes. `threshold` None:
    0.7 (DETR), 0.1 (OWL), 0.3 (Grounding DINO)."""
    return _records(jobs.plan_detect, inputs, dict(options), threshold=threshold, classes=classes,
                    max_detections=max_detections, out_dir=out_dir, coco=coco, masks=masks,
                    mask_model=mask_model, html=html, prompt=prompt, prompts_file=prompts_file, negative=negative)


def segment(inputs: Source | Sequence[Source] | None = None, *, mode: str = "semantic",
            prompt: str | Sequence[str] | None = None, out_dir: str | None = None, alpha: float = 0.5,
            instances: bool = False, min_area: int = 0, point: str | Sequence[str] | None = None,
            box: str | Sequence[float] | None = None, all_masks: bool = False, html: str | None = None,
            points_per_side: int | None = None, points_per_batch: int | None = None,
            pred_iou_threshold: float | None = None, stability_score_threshold: float | None = None,
            box_nms_threshold: float | None = None, crop_layers: int | None = None,
            **options: Unpack[Options]) -> Iterator[Record]:
    """Segments per image (`mode` semantic, panoptic, text with `prompt`; Segment Anything's prompt with
    `point` "X,Y[,LABEL]" and/or `box` in image pixels, or auto: masks from a grid of points, with SAM's
    defaults 32, 64, 0.88, 0.95, 0.7 for None): `record.segments[i].label, .score, .area, .box`;
    `record.mask` and `record.overlay` name the PNGs written to `out_dir`."""
    auto = dict(points_per_side=points_per_side, points_per_batch=points_per_batch,
                pred_iou_threshold=pred_iou_threshold, stability_score_threshold=stability_score_threshold,
                box_nms_threshold=box_nms_threshold, crop_layers=crop_layers)
    return _records(jobs.plan_segment, inputs, dict(options), mode=mode, prompt=prompt, out_dir=out_dir,
                    alpha=alpha, instances=instances, min_area=min_area, point=point, box=box,
                    all_masks=all_masks, html=html, auto=auto)


def inpaint(inputs: Source | Sequence[Source] | None = None, *, out_dir: str | None = None,
            mask_ratio: float | None = None, seed: int | None = None, mask: str | None = None,
            box: str | Sequence[float] | None = None, grid: bool = False,
            **options: Unpack[Options]) -> Iterator[Record]:
    """Masked-autoencoder reconstructions written to `out_dir` (required): `record.output`,
    `record.masked_fraction`. Masking: random (`mask_ratio`, `seed`), a `box` or a `mask` image."""
    return _records(jobs.plan_inpaint, inputs, dict(options), out_dir=out_dir, mask_ratio=mask_ratio, seed=seed,
                    mask=mask, box=box, grid=grid)


def attention(inputs: Source | Sequence[Source] | None = None, *, out_dir: str | None = None, alpha: float = 0.6,
              heads: bool = False, keep_mass: float | None = None, rollout: bool = False, html: str | None = None,
              **options: Unpack[Options]) -> Iterator[Record]:
    """The class token's self-attention in a timm ViT's last block (default model dino-s16), or its
    `rollout` through every block: `record.entropy` (nats); heat-map overlays in `out_dir`
    (`record.output`, `record.heads` with `heads`); with `keep_mass`, the DINO mask's `record.mask_area`
    (pixels) and `record.mask_box` (original pixels)."""
    return _records(jobs.plan_attention, inputs, dict(options), out_dir=out_dir, alpha=alpha, heads=heads,
                    keep_mass=keep_mass, rollout=rollout, html=html)


def depth(inputs: Source | Sequence[Source] | None = None, *, out_dir: str | None = None, npy: bool = False,
          html: str | None = None, **options: Unpack[Options]) -> Iterator[Record]:
    """Depth maps (default model depth-anything-s) written to `out_dir` (required): `record.depth` (16-bit
    PNG; value = level * `record.scale` + `record.offset`), `record.preview`, `record.npy` with `npy`;
    `record.kind` (relative or metric, from the checkpoint), `.unit`, `.min`, `.max`."""
    return _records(jobs.plan_depth, inputs, dict(options), out_dir=out_dir, npy=npy, html=html)


def pose(inputs: Source | Sequence[Source] | None = None, *, detector: "str | LoadedModel | None" = None,
         person_class: str = "person", person_threshold: float | None = None, boxes_from: str | None = None,
         whole_image: bool = False, kpt_threshold: float = 0.3, out_dir: str | None = None, coco: str | None = None,
         html: str | None = None, **options: Unpack[Options]) -> Iterator[Record]:
    """Human poses (default model vitpose-b), top-down from person boxes: `detector`'s (default detr-r50,
    `person_threshold` 0.9), a `boxes_from` file (detect's JSON lines or COCO JSON) or the `whole_image`.
    `record.people[i].box, .score, .keypoints[j].name, .x, .y, .score` (every keypoint, pixels of the
    image as displayed); skeleton drawings in `out_dir`, a COCO keypoints file at `coco`."""
    return _records(jobs.plan_pose, inputs, dict(options), detector=detector, person_class=person_class,
                    person_threshold=person_threshold, boxes_from=boxes_from, whole_image=whole_image,
                    kpt_threshold=kpt_threshold, out_dir=out_dir, coco=coco, html=html)


def caption(inputs: Source | Sequence[Source] | None = None, *, max_length: int | None = None,
            beams: int | None = None, greedy: bool = False, prefix: str | None = None, sidecar: bool = False,
            on_exists: str | None = None, html: str | None = None, detail: str | None = None,
            processor_options: Mapping[str, Any] | None = None, **options: Unpack[Options]) -> Iterator[Record]:
    """Captions (default model coca-b32; or a vision-language model such as smolvlm-256m, or Florence-2's
    own captioning tasks with florence-2-b, with `detail` brief, detailed or paragraph): `record.caption`;
    with `sidecar`, also `photo.txt` beside `photo.jpg`. `processor_options` as for `ask`."""
    quiet = bool(options.get("quiet", False))
    return _records(jobs.plan_caption, inputs, dict(options), max_length=max_length, beams=beams, greedy=greedy,
                    prefix=prefix, sidecar=sidecar, on_exists=on_exists, html=html, quiet=quiet, detail=detail,
                    processor_option=processor_options)


def ask(inputs: Source | Sequence[Source] | None = None, *, question: str | Sequence[str] | None = None,
        questions_file: str | None = None, system: str | None = None, choices: str | Sequence[str] | None = None,
        keep: str | None = None, threshold: float | None = None, max_new_tokens: int = 64,
        temperature: float | None = None, seed: int | None = None, html: str | None = None,
        processor_options: Mapping[str, Any] | None = None, **options: Unpack[Options]) -> Iterator[Record]:
    """Answers to `question` (one or a list) about each image from a vision-language model (default
    smolvlm-256m), greedy unless `temperature`: `record.answers[i].question, .answer`. With `choices`
    ('yes,no' or a list) each choice is scored by likelihood: `.scores[choice]` (probabilities) and the
    likeliest as `.answer`; with `keep` (a choice), `record.match` is true where its probability is at
    least `threshold` (0.5) for every question. `processor_options` sets the model's own image-processor
    settings for the run (e.g. {"do_image_splitting": False}: SmolVLM reads one view, far faster on a CPU)."""
    return _records(jobs.plan_ask, inputs, dict(options), question=question, questions_file=questions_file,
                    system=system, choices=choices, keep=keep, threshold=threshold, max_new_tokens=max_new_tokens,
                    temperature=temperature, seed=seed, html=html, processor_option=processor_options)


def index(folders: str | Sequence[str] | None = None, *, index_dir: str | None = None, rebuild: bool = False,
          merge_from: Sequence[str] | None = None, wait: float = 0.0, compact: bool = False,
          **options: Unpack[Options]) -> Fields | None:
    """Bring the index of `folders` up to date (or merge shard indexes) and return its counts:
    `.index, .added, .updated, .reused, .unchanged, .removed, .failed, .failed_unchanged, .compacted`.
    `compact=True` also rewrites the vector file without dead vectors (with no folders: only that).
    None on torchrun ranks other than 0."""
    quiet, shard = options.pop("quiet", False), options.pop("shard", None)
    model, batch = split_options(dict(options), ModelOptions, BatchOptions)
    listing = retrieval_jobs.run_index(_as_list(folders), model, batch, index_dir=index_dir, rebuild=rebuild,
                             merge_from=merge_from, wait=wait, shard=shard, compact=compact, quiet=quiet)
    return Fields(listing.rows[0]) if listing.rows else None


def search(text: str | None = None, *, image: str | None = None, folders: str | Sequence[str] | None = None,
           top_k: int = 10, threshold: float | None = None, min_score: float | None = None,
           relative: float | None = None, collapse_duplicates: bool = False, index_dir: str | None = None,
           rebuild: bool = False, wait: float = 0.0, html: str | None = None, exact: bool = False,
           **options: Unpack[Options]) -> Iterator[Fields]:
    """Images matching `text` (or like `image`), best first, after indexing `folders` incrementally:
    `hit.rank, hit.path, hit.score` (cosine). After ranking, `min_score` drops hits below it and
    `relative` those more than it below the best (nothing relevant: no hits); `collapse_duplicates`
    keeps one hit per duplicate group, the others in `hit.duplicates`. Big indexes are searched
    approximately (candidates re-ranked exactly); `exact=True` scores every image."""
    quiet = options.pop("quiet", False)
    model, batch = split_options(dict(options), ModelOptions, BatchOptions)
    listing = retrieval_jobs.run_search(text, image, _as_list(folders) or [], model, batch, top_k=top_k, threshold=threshold,
                              min_score=min_score, relative=relative, collapse_duplicates=collapse_duplicates,
                              index_dir=index_dir, rebuild=rebuild, wait=wait, html=html, quiet=quiet,
                              exact=exact)
    return iter([Fields(row) for row in listing.rows])


def dedup(folders: str | Sequence[str] | None = None, *, threshold: float | None = None, keep: str = "largest",
          index_dir: str | None = None, rebuild: bool = False, wait: float = 0.0, html: str | None = None,
          **options: Unpack[Options]) -> Iterator[Fields]:
    """Groups of duplicate images under `folders` (indexed incrementally first; None: the whole index),
    each naming the file to keep: `group.group, group.keep, group.duplicates[i].path, .tier, .score`
    (tier exact, near or similar, relative to the kept file). Nothing is deleted."""
    quiet = options.pop("quiet", False)
    model, batch = split_options(dict(options), ModelOptions, BatchOptions)
    listing = retrieval_jobs.run_dedup(_as_list(folders) or [], model, batch, threshold=threshold, keep=keep,
                             index_dir=index_dir, rebuild=rebuild, wait=wait, html=html, quiet=quiet)
    return iter([Fields(row) for row in listing.rows])


def load_model(ref: str | None = None, *, task: str, device: str = "auto", precision: str = "auto",
               offline: bool = False, compile: bool = False) -> "LoadedModel":
    """Resolve a model reference (None: the command's default) and load it for a command (`task`:
    classify, label, embed, detect, segment, inpaint, depth, pose, caption, ask, attention, index or search);
    pass it on as `model=`."""
    from vitkit.models.spec import CAPABILITY_OF_COMMAND

    if task not in CAPABILITY_OF_COMMAND:
        raise UsageError(f"no command {task!r}", hint=f"use one of {', '.join(CAPABILITY_OF_COMMAND)}")
    return ModelOptions(ref, device, precision, offline, compile).load(CAPABILITY_OF_COMMAND[task])


def _as_list(paths: str | Sequence[str] | None) -> list[str] | None:
    return [paths] if isinstance(paths, str) else (list(paths) if paths is not None else None)
