"""The retrieval commands' jobs (index, search, dedup): options in, rows out, as vitkit/jobs.py does for
the image commands. Each takes the index's writer lock only as long as its update needs it."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Sequence

from vitkit.errors import EXIT_OK, EXIT_SOME_INPUTS_FAILED, UsageError
from vitkit.jobs import check_threshold
from vitkit.pipeline import BatchOptions, Listing, ModelOptions
from vitkit.runtime.report import Reporter

if TYPE_CHECKING:
    from vitkit.retrieval.update import IndexOptions


def _index_options(model: ModelOptions, batch: BatchOptions, index_dir: str | None, rebuild: bool, wait: float,
                   shard: str | None = None, compact: bool = False) -> "IndexOptions":
    from vitkit.retrieval.update import IndexOptions

    loaded = None if model.model is None or isinstance(model.model, str) else model.model
    return IndexOptions(index_dir, model.reference, rebuild, wait, model.device, model.precision, model.offline,
                        batch.run_options(), model.compile, shard, compact, loaded)


def run_index(folders: Sequence[str] | None, model: ModelOptions, batch: BatchOptions, *,
              index_dir: str | None = None, rebuild: bool = False, merge_from: Sequence[str] | None = None,
              wait: float = 0.0, shard: str | None = None, compact: bool = False, failed: bool = False,
              quiet: bool = False) -> Listing:
    """Bring an index up to date with folders, or merge shard indexes into one. Under torchrun every
    rank embeds a part; rank 0 alone gets the counts row (the others get none and a status of 0).
    `compact` rewrites the vector file without dead vectors (after the update, or on its own);
    `failed` lists the remembered failures instead of indexing."""
    from vitkit.retrieval.update import compact_index, index_folders, list_failures, merge_indexes
    from vitkit.runtime.distributed import finish, get_context

    if not folders and not merge_from and not compact and not failed:
        raise UsageError("no folders given",
                         hint="vitkit index FOLDER..., --compact, --failed, or --merge-from SHARD_DIR ... --index DIR")
    if folders and merge_from:
        raise UsageError("pass folders to index or --merge-from shard indexes, not both",
                         hint="merge the shards first, then update with `vitkit index FOLDER --index DIR`")
    options = _index_options(model, batch, index_dir, rebuild, wait, shard, compact)
    if failed:
        _, failures = list_failures(options)
        return Listing([asdict(f) for f in failures], columns=("path", "reason", "size", "mtime_ns"))
    if compact and not folders and not merge_from:
        target, dropped = compact_index(options)
        return Listing([{"index": str(target), "compacted": dropped}])
    context = get_context()
    if merge_from:
        if shard is not None or context is not None:
            raise UsageError("--merge-from runs as one process", hint="drop --shard and run it without torchrun")
        target, merged = merge_indexes(merge_from, options)
        return Listing([{"index": str(target), **asdict(merged)}])
    result = index_folders(folders or [], options, Reporter(quiet=quiet, prefix=context.prefix if context else ""))
    finish(EXIT_SOME_INPUTS_FAILED if result.counts.failed else EXIT_OK)
    if context is not None and not context.is_main:
        return Listing([])
    return Listing([{"index": str(result.folder), **asdict(result.counts)}], result.counts.failed)


def run_search(text: str | None, image: str | None, folders: Sequence[str], model: ModelOptions,
               batch: BatchOptions, *, top_k: int = 10, threshold: float | None = None,
               min_score: float | None = None, relative: float | None = None, collapse_duplicates: bool = False,
               index_dir: str | None = None, rebuild: bool = False, wait: float = 0.0, html: str | None = None,
               quiet: bool = False, exact: bool = False) -> Listing:
    """One query against the index, after indexing `folders` incrementally; one row per hit, best first.
    `min_score` and `relative` drop weak hits after ranking (nothing left: no rows and a note on stderr);
    `collapse_duplicates` keeps one hit per duplicate group, with the others in its `duplicates`. `exact` scores every image (no ANN)."""
    from vitkit.outputs.html import write_sheet
    from vitkit.retrieval.relevance import check_floor
    from vitkit.retrieval.search import SEARCH_LAYOUT, Relevance, search_images
    from vitkit.runtime.distributed import refuse_launch

    refuse_launch("search", "build the index under torchrun (`vitkit index`), then search in one process")
    if bool(text) == bool(image):
        raise UsageError("give one query: --text 'a dog on a beach' or --image FILE")
    check_threshold(threshold, probability=False)  # a cosine
    check_floor(min_score, relative)
    options = _index_options(model, batch, index_dir, rebuild, wait)
    reporter = Reporter(quiet=quiet)
    relevance = Relevance(min_score, relative, collapse_duplicates)
    result = search_images(text, image, folders, top_k, threshold, options, reporter, relevance, exact)
    rows = [{"rank": rank, "path": hit.path, "score": hit.score} for rank, hit in enumerate(result.hits, 1)]
    if result.duplicates is not None:
        for row in rows:
            row["duplicates"] = list(result.duplicates[row["path"]])
    if not rows and (min_score is not None or relative is not None):
        reporter.message("nothing relevant: no hit reached --min-score/--relative; try a lower floor")
    if html:
        write_sheet(html, rows, SEARCH_LAYOUT, f"query: {text or image}")
    return Listing(rows, result.counts.failed, SEARCH_LAYOUT)


def run_dedup(folders: Sequence[str], model: ModelOptions, batch: BatchOptions, *, threshold: float | None = None,
              keep: str = "largest", index_dir: str | None = None, rebuild: bool = False, wait: float = 0.0,
              html: str | None = None, quiet: bool = False) -> Listing:
    """Duplicate groups among the files under `folders` (indexed incrementally first; none: the whole
    index), one row per group: `{group, keep, duplicates: [{path, tier, score}]}`."""
    from vitkit.outputs.groups import DEDUP_LAYOUT, describe_groups, group_records, write_group_page
    from vitkit.retrieval.dedup import DEFAULT_THRESHOLD, find_duplicates
    from vitkit.runtime.distributed import refuse_launch

    refuse_launch("dedup", "build the index under torchrun (`vitkit index`), then run dedup in one process")
    reporter = Reporter(quiet=quiet)
    options = _index_options(model, batch, index_dir, rebuild, wait)
    result = find_duplicates(folders, DEFAULT_THRESHOLD if threshold is None else threshold, keep, options, reporter)
    for path, reason in result.unhashable:  # not an input failure: the file can still be exact or similar
        reporter.message(f"warning: {path}: no perceptual hash ({reason}); it can only be an exact or similar "
                         "duplicate")
    rows = group_records(result.groups)
    if html:
        write_group_page(html, rows, f"{len(rows)} groups among {result.files} files")
    return Listing(rows, result.counts.failed, DEDUP_LAYOUT, summary=describe_groups(rows, result.files))
