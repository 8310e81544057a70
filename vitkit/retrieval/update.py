"""Keeping an index up to date with folders: plan from the filesystem, embed only what changed, sweep last."""

from __future__ import annotations

import hashlib
import os
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

from vitkit.inputs.discover import InputItem, discover_inputs
from vitkit.errors import IndexModelMismatchError, UsageError
from vitkit.retrieval.index import FileState, MergeCounts, VectorIndex, file_state
from vitkit.models.registry import ModelSpec
from vitkit.runtime.report import Reporter
from vitkit.runtime.runner import RunOptions, run
from vitkit.runtime.sharding import apply_shard
from vitkit.tasks.embed import EmbedTask

if TYPE_CHECKING:
    from vitkit.runtime.distributed import RankContext

INDEX_DIR_ENV = "VITKIT_INDEX_DIR"
HOME_ENV = "VITKIT_HOME"


@dataclass(frozen=True)
class IndexCounts:
    added: int = 0  # new paths, embedded
    updated: int = 0  # known paths whose content changed, re-embedded
    reused: int = 0  # renamed, copied or touched files whose content already had a vector
    unchanged: int = 0
    removed: int = 0  # paths gone from the scanned folders
    failed: int = 0

    @property
    def embedded(self) -> int:
        return self.added + self.updated


@dataclass(frozen=True)
class IndexOptions:
    index_dir: str | None = None  # None: the model's default index under the vitkit home
    model: str | None = None
    rebuild: bool = False
    wait_seconds: float = 0.0
    device: str = "auto"
    precision: str = "auto"
    offline: bool = False
    run: RunOptions = RunOptions()
    compile: bool = False
    shard: str | None = None  # "I/N": embed only that slice of the inputs


@dataclass(frozen=True)
class IndexResult:
    task: EmbedTask
    folder: Path
    counts: IndexCounts


def index_folders(folders: Sequence[str], options: IndexOptions, reporter: Reporter) -> IndexResult:
    """Load the model, take the writer lock, and bring the index up to date with `folders`.
    Under torchrun every rank embeds a part and rank 0 alone opens and writes the index; the other
    ranks return zero counts."""
    from vitkit.runtime.distributed import get_context
    from vitkit.models.loading import load_model
    from vitkit.models.registry import EMBED, resolve

    spec = resolve(options.model, EMBED)
    context = get_context()
    task = EmbedTask(load_model(spec, EMBED, options.device, options.precision, options.offline,
                                compile=options.compile))
    folder = Path(options.index_dir) if options.index_dir else get_default_index_dir(spec)
    counts = IndexCounts()
    if context is not None and not context.is_main:
        _embed_for_main(context, task, options.run, reporter)
    elif folders or options.rebuild:
        with VectorIndex.open_for_writing(folder, get_model_key(spec), task.dim, rebuild=options.rebuild,
                                          wait_seconds=options.wait_seconds) as index:
            counts = update_index(index, task, folders, options.run, reporter, options.shard)
    return IndexResult(task, folder, counts)


def merge_indexes(sources: Sequence[str], options: IndexOptions) -> tuple[Path, MergeCounts]:
    """Merge shard indexes (e.g. from `vitkit index --shard I/N --index DIR`) into `options.index_dir`.
    No model is loaded: the shards' model key must match the target's, and --model's when given."""
    from vitkit.models.registry import EMBED, resolve

    spec = resolve(options.model, EMBED) if options.model or not options.index_dir else None
    target = Path(options.index_dir) if options.index_dir else get_default_index_dir(spec)
    shards: list[VectorIndex] = []
    try:
        shards.extend(VectorIndex.open_for_reading(source) for source in sources)
        model_key = get_model_key(spec) if spec else shards[0].model_key
        for shard in shards:
            if os.path.realpath(shard.folder) == os.path.realpath(target):
                raise UsageError(f"cannot merge index {shard.folder} into itself", hint="pass a different --index")
            if shard.model_key != model_key:
                raise IndexModelMismatchError(f"index {shard.folder} was built with {shard.model_key}, not {model_key}",
                                              hint="merge only shards built with the same --model")
        totals = MergeCounts(0, 0, 0, 0)
        with VectorIndex.open_for_writing(target, model_key, shards[0].dim, rebuild=options.rebuild,
                                          wait_seconds=options.wait_seconds) as index:
            for shard in shards:
                merged = index.merge_from(shard)
                totals = MergeCounts(*(a + b for a, b in zip(astuple(totals), astuple(merged))))
        return target, totals
    finally:
        for shard in shards:
            shard.close()


def get_vitkit_home() -> Path:
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV])
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(data_home) / "vitkit"


def get_default_index_dir(spec: ModelSpec) -> Path:
    """One index per model under the vitkit home: photo folders stay untouched (and may be read-only)."""
    if os.environ.get(INDEX_DIR_ENV):
        return Path(os.environ[INDEX_DIR_ENV])
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in spec.id.strip("/"))[-80:]
    digest = hashlib.blake2b(get_model_key(spec).encode(), digest_size=4).hexdigest()
    return get_vitkit_home() / "index" / f"{slug}-{digest}"


def get_model_key(spec: ModelSpec) -> str:
    """Names the vector space: the reference, plus a fingerprint of the files for a local folder that may change."""
    key = f"{spec.backend}:{spec.source}"
    if spec.local_path:
        digest = hashlib.blake2b(digest_size=8)
        for path in sorted(Path(spec.local_path).iterdir()):
            if path.is_file():
                stat = path.stat()
                digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
        key += f"#{digest.hexdigest()}"
    return key


def update_index(index: VectorIndex, task: EmbedTask, folders: Sequence[str], options: RunOptions,
                 reporter: Reporter, shard: str | None = None) -> IndexCounts:
    """Bring the index in line with `folders` (or with the `--shard I/N` slice of what they hold). Each
    batch is committed as it completes, so an interrupted run keeps its work; removals happen only
    after a complete scan."""
    scanned = discover_inputs(list(folders))
    items = apply_shard(scanned, shard)
    _report_problems(items, reporter)
    states = _stat_all([i for i in items if not i.problem], reporter)
    failed = len(items) - len(states)  # missing paths, unreadable folders, files that vanished
    plan = index.plan_update(list(states.values()))
    for path, reason in plan.hash_failures:
        reporter.input_failed(path, reason, "unreadable")
    known = index.known_paths()
    if plan.reusable:
        index.add([(states[path], digest, None, None, None) for path, digest in plan.reusable])
    # Files of other shards still exist: the sweep must only forget files gone from the folders.
    seen = {os.path.abspath(i.path) for i in scanned if not i.problem} - {os.path.abspath(i.path) for i in items}
    seen |= set(plan.unchanged) | {path for path, _ in plan.reusable}
    added = updated = 0
    for batch in _embed_across_ranks(task, plan.to_embed, options, reporter):
        entries = [(states[path], digest, vector, w, h) for path, digest, vector, w, h in batch if vector is not None]
        index.add(entries)
        done = {entry[0].path for entry in entries}
        seen |= done
        added += len(done - known)
        updated += len(done & known)
        failed += len(batch) - len(entries)
    # A file that failed now loses its stale vector too: it is not in `seen`.
    removed = index.remove_missing(seen, [os.path.abspath(f) for f in folders if os.path.isdir(f)])
    return IndexCounts(added, updated, len(plan.reusable), len(plan.unchanged), removed,
                       failed + len(plan.hash_failures))


def _embed_across_ranks(task: EmbedTask, to_embed: Sequence[tuple[str, str]], options: RunOptions,
                        reporter: Reporter) -> Iterator[list[tuple]]:
    """Rank 0's batches as they complete (committed as they come), then under torchrun the other
    ranks' batches once they are done; ranks take contiguous parts of `to_embed`."""
    from vitkit.runtime.distributed import get_context

    context = get_context()
    if context is None:
        yield from _embed(task, to_embed, options, reporter)
        return
    to_embed = context.shard(context.broadcast(list(to_embed)))
    yield from _embed(task, to_embed, options, reporter)
    for batches in (context.gather(None) or [])[1:]:
        yield from batches


def _embed_for_main(context: "RankContext", task: EmbedTask, options: RunOptions, reporter: Reporter) -> None:
    """A rank other than 0: embed this rank's part of rank 0's plan and send the batches back."""
    to_embed = context.shard(context.broadcast(None))
    context.gather(list(_embed(task, to_embed, options, reporter)))


def _report_problems(items: list[InputItem], reporter: Reporter) -> None:
    for item in items:
        if item.problem:
            reporter.input_failed(item.path, item.problem, item.problem_kind)


def _stat_all(items: list[InputItem], reporter: Reporter) -> dict[str, FileState]:
    states: dict[str, FileState] = {}
    for item in items:
        try:
            state = file_state(item.path)
        except OSError as exc:
            reporter.input_failed(item.path, f"cannot read: {exc.strerror or exc}", "unreadable")
            continue
        states[state.path] = state
    return states


def _embed(task: EmbedTask, to_embed: Sequence[tuple[str, str]], options: RunOptions,
           reporter: Reporter) -> Iterator[list[tuple]]:
    """Yield (path, hash, vector or None, width, height) in batches of the run's batch size."""
    digests = dict(to_embed)
    batch: list[tuple] = []
    batch_size = options.batch_size_for(task.model.device)
    for record in run(task, [InputItem(path) for path, _ in to_embed], options, reporter):
        vector = record.fields.get("embedding") if record.ok else None
        batch.append((record.path, digests[record.path], vector, record.width, record.height))
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch
