"""Search: one text or image query against the index, optionally restricted to (and refreshed from) folders."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from vitkit.inputs.discover import InputItem
from vitkit.errors import UsageError
from vitkit.retrieval.index import Hit, VectorIndex
from vitkit.retrieval.update import IndexCounts, IndexOptions, get_model_key, index_folders
from vitkit.outputs.records import RecordLayout
from vitkit.runtime.report import Reporter
from vitkit.runtime.runner import run
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


def search_images(text: str | None, image: str | None, folders: Sequence[str], top_k: int, threshold: float | None,
                  options: IndexOptions, reporter: Reporter) -> SearchResult:
    indexed = index_folders(folders, options, reporter)
    query = embed_query(indexed.task, text, image)
    under = [os.path.abspath(f) for f in folders] or None
    with VectorIndex.open_for_reading(indexed.folder, get_model_key(indexed.task.model.spec)) as index:
        [hits] = index.search(query, k=top_k, threshold=threshold, under=under)
    return SearchResult(hits, indexed.counts)


def embed_query(task: EmbedTask, text: str | None, image: str | None) -> np.ndarray:
    """(1, D) unit vector for the text, or for the image run through the same pipeline as indexed images."""
    if text is not None:
        return task.encode_texts([text])
    [record] = run(task, [InputItem(image or "")])
    if not record.ok:
        raise UsageError(f"cannot use query image {image}: {record.error}")
    return np.asarray(record.fields["embedding"], dtype=np.float32)[None]
