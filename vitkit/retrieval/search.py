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
from vitkit.retrieval.store import open_reader
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


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    counts: IndexCounts  # of the incremental update that ran first (all zero when no folders were given)


def search_images(text: str | None, image: str | None, folders: Sequence[str] = (), top_k: int = 10,
                  threshold: float | None = None, options: IndexOptions = IndexOptions(),
                  reporter: Reporter | None = None, exact: bool = False) -> SearchResult:
    """The top_k files most like the text (or image), best first; `folders` are indexed first and
    restrict the results to them. Approximate on big indexes (see approximate.py) unless `exact`."""
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
        [hits] = index.search(query, k=top_k, threshold=threshold, under=under, exact=exact)
    return SearchResult(hits, indexed.counts)


def embed_query(task: EmbedTask, text: str | None, image: str | None) -> np.ndarray:
    """(1, D) unit vector for the text, or for the image run through the same pipeline as indexed images."""
    from vitkit.runtime.runner import run

    if text is not None:
        return task.encode_texts([text])
    [record] = run(task, [InputItem(image or "")])
    if not record.ok:
        raise UsageError(f"cannot use query image {image}: {record.error}")
    return np.asarray(record.fields["embedding"], dtype=np.float32)[None]
