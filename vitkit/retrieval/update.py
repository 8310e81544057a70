"""Keeping an index up to date with folders: plan from the filesystem, load the model only if something
needs embedding, embed only what changed, sweep last."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import astuple, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from vitkit.errors import IndexModelMismatchError, UsageError
from vitkit.inputs.discover import InputItem, discover_inputs
from vitkit.models.registry import ModelSpec
from vitkit.retrieval.plan import FileState, file_state
from vitkit.retrieval.store import Entry, Failure, IndexReader, index_exists, open_reader
from vitkit.retrieval.writer import IndexWriter, MergeCounts, open_writer
from vitkit.runtime.options import RunOptions
from vitkit.runtime.report import Reporter
from vitkit.runtime.sharding import apply_shard

if TYPE_CHECKING:  # torch comes with these: a run with nothing to embed never imports them
    import numpy as np

    from vitkit.models.loading import LoadedModel
    from vitkit.runtime.distributed import RankContext
    from vitkit.tasks.embed import EmbedTask

INDEX_DIR_ENV = "VITKIT_INDEX_DIR"
HOME_ENV = "VITKIT_HOME"


@dataclass(frozen=True)
class IndexCounts:
    added: int = 0  # new paths, embedded
    updated: int = 0  # known paths whose content changed, re-embedded
    reused: int = 0  # renamed, copied or touched files whose content already had a vector
    unchanged: int = 0
    removed: int = 0  # paths gone from the scanned folders
    failed: int = 0  # failed in this run: the exit status says so
    failed_unchanged: int = 0  # failed in an earlier run and unchanged since: skipped, not retried
    compacted: int = 0  # dead vectors dropped from the vector file

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
    run: RunOptions = field(default_factory=RunOptions)
    compile: bool = False
    shard: str | None = None  # "I/N": embed only that slice of the inputs
    compact: bool = False  # rewrite the vector file without dead vectors after updating
    loaded: "LoadedModel | None" = None  # a model the library's caller loaded (vitkit.load_model): used as it is


@dataclass(frozen=True)
class IndexResult:
    task: EmbedTask | None  # None when nothing needed the model
    folder: Path
    counts: IndexCounts
    spec: ModelSpec | None = None


@dataclass(frozen=True)
class _Embedded:
    """One file's outcome from the model (sent between ranks under torchrun)."""

    path: str
    content_hash: str
    vector: np.ndarray | None  # (D,) float32; None when the file failed
    width: int | None
    height: int | None
    error: str | None


def index_folders(folders: Sequence[str], options: IndexOptions = IndexOptions(),
                  reporter: Reporter | None = None) -> IndexResult:
    """Bring the index up to date with `folders`, taking the writer lock. The model is loaded only if
    a file needs embedding (or the index is new). Under torchrun every rank embeds a part and rank 0
    alone opens and writes the index; the other ranks return zero counts."""
    from vitkit.models.registry import SEARCH, resolve
    from vitkit.runtime.distributed import get_context

    reporter = reporter or Reporter(quiet=True)
    spec = resolve(options.model, SEARCH)
    folder = Path(options.index_dir) if options.index_dir else get_default_index_dir(spec)
    context = get_context()
    loaded: list[EmbedTask] = []

    def get_task() -> EmbedTask:
        if not loaded:
            loaded.append(load_embed_task(spec, options))
        return loaded[0]

    if context is not None:  # every rank takes part in the collectives, so every rank loads the model
        get_task()
        if not context.is_main:
            _embed_for_main(context, get_task(), options.run, reporter)
            return IndexResult(get_task(), folder, IndexCounts(), spec)
    if not folders and not options.rebuild and not options.compact:
        return IndexResult(None, folder, IndexCounts(), spec)
    dim = get_task().dim if options.rebuild or not index_exists(folder) else None
    with open_writer(folder, get_model_key(spec), dim, model_ref=get_model_ref(spec), rebuild=options.rebuild,
                     wait_seconds=options.wait_seconds) as index:
        counts = IndexCounts()
        if folders or options.rebuild:
            counts = update_index(index, get_task, folders, options.run, reporter, options.shard)
        if options.compact:
            counts = replace(counts, compacted=counts.compacted + index.compact())
    return IndexResult(loaded[0] if loaded else None, folder, counts, spec)


def load_embed_task(spec: ModelSpec, options: IndexOptions) -> EmbedTask:
    from vitkit.models.loading import load_model
    from vitkit.models.registry import SEARCH
    from vitkit.tasks.embed import EmbedTask

    if options.loaded is not None:  # its device, precision and compilation are the caller's
        return EmbedTask(options.loaded)
    return EmbedTask(load_model(spec, SEARCH, options.device, options.precision, options.offline,
                                compile=options.compile))


def resolve_index_dir(options: IndexOptions) -> tuple[Path, ModelSpec | None]:
    """The index folder options name, resolving the model only when no --index is given or --model is:
    commands that load no model (merge, listing failures, compacting) need no model to find an index."""
    from vitkit.models.registry import SEARCH, resolve

    spec = resolve(options.model, SEARCH) if options.model or not options.index_dir else None
    return (Path(options.index_dir) if options.index_dir else get_default_index_dir(spec)), spec


def list_failures(options: IndexOptions = IndexOptions()) -> tuple[Path, list[Failure]]:
    """The files the index remembers as failed (skipped until they change), by path."""
    folder, spec = resolve_index_dir(options)
    with open_reader(folder, get_model_key(spec) if spec else None, get_model_ref(spec) if spec else None) as index:
        return folder, index.failures()


def compact_index(options: IndexOptions = IndexOptions()) -> tuple[Path, int]:
    """Rewrite the index's vector file without dead vectors; returns the folder and how many it dropped."""
    folder, spec = resolve_index_dir(options)
    if spec is None:
        with open_reader(folder) as reader:
            key, ref = reader.model_key, reader.model_ref
    else:
        key, ref = get_model_key(spec), get_model_ref(spec)
    with open_writer(folder, key, model_ref=ref, wait_seconds=options.wait_seconds) as index:
        return folder, index.compact()


def merge_indexes(sources: Sequence[str], options: IndexOptions) -> tuple[Path, MergeCounts]:
    """Merge shard indexes (e.g. from `vitkit index --shard I/N --index DIR`) into `options.index_dir`.
    No model is loaded: the shards' model key must match the target's, and the model's when given."""
    target, spec = resolve_index_dir(options)
    shards: list[IndexReader] = []
    try:
        shards.extend(open_reader(source) for source in sources)
        model_key = get_model_key(spec) if spec else shards[0].model_key
        for shard in shards:
            if os.path.realpath(shard.folder) == os.path.realpath(target):
                raise UsageError(f"cannot merge index {shard.folder} into itself",
                                 hint="pass a different --index (index_dir= in Python)")
            if shard.model_key != model_key:
                raise IndexModelMismatchError(f"index {shard.folder} was built with {shard.model_key}, not {model_key}",
                                              hint="merge only shards built with the same --model (model= in Python)")
        totals = MergeCounts(0, 0, 0, 0)
        with open_writer(target, model_key, shards[0].dim, model_ref=get_model_ref(spec) if spec else shards[0].model_ref,
                         rebuild=options.rebuild, wait_seconds=options.wait_seconds) as index:
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


def get_model_ref(spec: ModelSpec) -> str:
    """A --model value that names this model from any folder: the alias as typed, or the absolute folder."""
    return spec.local_path or spec.id


def update_index(index: IndexWriter, get_task: Callable[[], EmbedTask], folders: Sequence[str],
                 options: RunOptions = RunOptions(), reporter: Reporter | None = None,
                 shard: str | None = None) -> IndexCounts:
    """Bring the index in line with `folders` (or with the `--shard I/N` slice of what they hold). Each
    batch is committed as it completes, so an interrupted run keeps its work; removals happen only
    after a complete scan; then the vector file is compacted if it is mostly dead."""
    from vitkit.runtime.distributed import get_context

    reporter = reporter or Reporter(quiet=True)
    scanned = discover_inputs(list(folders))
    items = apply_shard(scanned, shard)
    _report_problems(items, reporter)
    states = _stat_all([i for i in items if not i.problem], reporter)
    failed = len(items) - len(states)  # missing paths, unreadable folders, files that vanished
    plan = index.plan_update(list(states.values()))
    for path, reason in plan.hash_failures:
        reporter.input_failed(path, reason, "unreadable")
    if plan.failed_unchanged:
        count = len(plan.failed_unchanged)
        reporter.message(f"{count} {'file' if count == 1 else 'files'} failed before and "
                         f"{'has' if count == 1 else 'have'} not changed; skipped (`vitkit index --failed` lists them)")
    known = index.known_paths()
    if plan.reusable:
        index.add([Entry(states[path], digest) for path, digest in plan.reusable])
    # Files of other shards still exist: the sweep must only forget files gone from the folders.
    other_shards = {os.path.abspath(i.path) for i in scanned if not i.problem} - {os.path.abspath(i.path) for i in items}
    seen = other_shards | set(plan.unchanged) | {path for path, _ in plan.reusable}
    failing = other_shards | set(plan.failed_unchanged)
    added = updated = 0
    if plan.to_embed or get_context() is not None:  # rank 0 must always join the other ranks
        for batch in _embed_across_ranks(get_task(), plan.to_embed, options, reporter):
            done = [e for e in batch if e.vector is not None]
            index.add([Entry(states[e.path], e.content_hash, e.vector, e.width, e.height) for e in done])
            index.record_failures([Failure(e.path, states[e.path].size, states[e.path].mtime_ns, e.error or "failed")
                                   for e in batch if e.vector is None])
            paths = {e.path for e in done}
            seen |= paths
            failing |= {e.path for e in batch if e.vector is None}
            added += len(paths - known)
            updated += len(paths & known)
            failed += len(batch) - len(done)
    # A file that failed now loses its stale vector too: it is not in `seen`.
    removed = index.remove_missing(seen, [os.path.abspath(f) for f in folders if os.path.isdir(f)], failing)
    compacted = index.compact_if_mostly_dead()
    return IndexCounts(added, updated, len(plan.reusable), len(plan.unchanged), removed,
                       failed + len(plan.hash_failures), len(plan.failed_unchanged), compacted)


def _embed_across_ranks(task: EmbedTask, to_embed: Sequence[tuple[str, str]], options: RunOptions,
                        reporter: Reporter) -> Iterator[list[_Embedded]]:
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


def _embed_for_main(context: RankContext, task: EmbedTask, options: RunOptions, reporter: Reporter) -> None:
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
           reporter: Reporter) -> Iterator[list[_Embedded]]:
    """Each file's outcome, in batches of the run's batch size."""
    from vitkit.runtime.runner import run

    digests = dict(to_embed)
    batch: list[_Embedded] = []
    batch_size = options.batch_size_for(task.model.device)
    for record in run(task, [InputItem(path) for path, _ in to_embed], options, reporter):
        vector = record.fields.get("embedding") if record.ok else None
        batch.append(_Embedded(record.path, digests[record.path], vector, record.width, record.height,
                               None if record.ok else record.error))
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch
