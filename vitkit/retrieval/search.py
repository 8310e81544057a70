"""Search: one text or image query against the index, optionally restricted to (and refreshed from) folders."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from vitkit.errors import UsageError
from vitkit.inputs.discover import InputItem
from vitkit.outputs.records import RecordLayout
from vitkit.retrieval.exact import Hit
from vitkit.retrieval.relevance import Collapsed, apply_floor, collapse_duplicates
from vitkit.retrieval.store import IndexReader, open_reader
from vitkit.retrieval.update import (
    IndexCounts, IndexOptions, get_model_key, get_model_ref, index_folders, load_embed_task,
)
from vitkit.runtime.report import Reporter

if TYPE_CHECKING:
    from vitkit.tasks.embed import EmbedTask

SEARCH_LAYOUT = RecordLayout(
    csv_columns=("rank", "path", "score"),
    csv_rows=lambda record: [record],
    describe=lambda record: f"#{record['rank']}  score {record['score']:.3f}",
    table_columns=("rank", "path", "score"),
)


# With --collapse-duplicates, search first asks for this many times top_k hits (more if groups swallow them).
COLLAPSE_OVERFETCH = 4


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    counts: IndexCounts  # of the incremental update that ran first (all zero when no folders were given)
    duplicates: dict[str, tuple[str, ...]] | None = None  # with collapse: a hit's path -> its group's other hits


@dataclass(frozen=True)
class Relevance:
    """What search keeps after ranking (all off by default)."""

    min_score: float | None = None  # absolute cosine floor
    relative: float | None = None  # keep hits within this much of the best score
    collapse_duplicates: bool = False  # one hit per duplicate group (dedup's tiers, default threshold)


def search_images(text: str | None, image: str | None, folders: Sequence[str] = (), top_k: int = 10,
                  threshold: float | None = None, options: IndexOptions = IndexOptions(),
                  reporter: Reporter | None = None, relevance: Relevance = Relevance(),
                  exact: bool = False) -> SearchResult:
    """The top_k files most like the text (or image), best first; `folders` are indexed first and
    restrict the results to them. `relevance` then collapses duplicates and drops weak hits.
    Approximate on big indexes (see approximate.py) unless `exact`."""
    if (text is None) == (image is None):
        raise UsageError("give one query: text or an image, not both or neither",
                         hint="--text 'a dog on a beach' or --image FILE (text= or image= in Python)")
    indexed = index_folders(folders, options, reporter)
    spec = indexed.spec
    under = [os.path.abspath(f) for f in folders] or None
    # Opened before the model loads: a missing index or one made by another model fails at once.
    reporter = reporter or Reporter(quiet=True)
    with open_reader(indexed.folder, get_model_key(spec), get_model_ref(spec)) as index:
        index.warn = lambda text: reporter.message(f"warning: {text}")
        query = embed_query(indexed.task or load_embed_task(spec, options), text, image)
        if not relevance.collapse_duplicates:
            [hits] = index.search(query, k=top_k, threshold=threshold, under=under, exact=exact)
            return SearchResult(apply_floor(hits, relevance.min_score, relevance.relative), indexed.counts)
        collapsed = _collapsed_search(index, query, top_k, threshold, under, exact)
    hits = apply_floor(collapsed.hits[:top_k], relevance.min_score, relevance.relative)
    return SearchResult(hits, indexed.counts, {hit.path: collapsed.duplicates[hit.path] for hit in hits})


def _collapsed_search(index: IndexReader, query: np.ndarray, top_k: int, threshold: float | None,
                      under: list[str] | None, exact: bool) -> Collapsed:
    """At least top_k groups' best hits when the index has them, asking for more hits while groups
    swallow them."""
    from vitkit.retrieval.dedup import DEFAULT_THRESHOLD, NEAR_FLOOR

    fetch = top_k * COLLAPSE_OVERFETCH
    while True:
        [hits] = index.search(query, k=fetch, threshold=threshold, under=under, exact=exact)
        collapsed = collapse_duplicates(index, hits, DEFAULT_THRESHOLD, NEAR_FLOOR)
        if len(collapsed.hits) >= top_k or len(hits) < fetch:
            return collapsed
        fetch *= COLLAPSE_OVERFETCH


def embed_query(task: EmbedTask, text: str | None, image: str | None) -> np.ndarray:
    """(1, D) unit vector for the text, or for the image run through the same pipeline as indexed images."""
    from vitkit.runtime.runner import run

    if text is not None:
        return task.encode_texts([text])
    [record] = run(task, [InputItem(image or "")])
    if not record.ok:
        raise UsageError(f"cannot use query image {image}: {record.error}")
    return np.asarray(record.fields["embedding"], dtype=np.float32)[None]
