"""Records: one per input, in input order. Failures are values: `{path, error}` and nothing else."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping


@dataclass(frozen=True)
class Record:
    path: str
    width: int | None = None
    height: int | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)  # the task's own keys (predictions, detections, ...)
    error: str | None = None
    error_kind: str | None = None  # for summaries; not part of the written record
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        return {"path": self.path, "width": self.width, "height": self.height, **self.fields}

    def __getattr__(self, name: str) -> Any:
        """The task's own keys as attributes: `record.predictions[0].label`, `record.embedding`."""
        try:
            return with_attributes(object.__getattribute__(self, "fields")[name])
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}") from None


class Fields(dict):
    """A dict whose keys are also attributes (`prediction.label`); what records hold inside, and the
    rows of listings such as search hits and index counts."""

    def __getattr__(self, name: str) -> Any:
        try:
            return with_attributes(self[name])
        except KeyError:
            raise AttributeError(f"no field {name!r}; it has {', '.join(self)}") from None

    @property
    def ok(self) -> bool:
        return "error" not in self

    @property
    def error(self) -> str | None:
        return self.get("error")

    def to_dict(self) -> dict[str, Any]:
        return dict(self)


def with_attributes(value: Any) -> Any:
    """Dicts, also inside lists and tuples, as `Fields`; anything else as it is."""
    if isinstance(value, dict):
        return value if isinstance(value, Fields) else Fields(value)
    if isinstance(value, (list, tuple)):
        return type(value)(with_attributes(v) for v in value)
    return value


@dataclass(frozen=True)
class RecordLayout:
    """How a task's records look in a table and a CSV file; JSON needs nothing beyond `to_dict`."""

    csv_columns: tuple[str, ...]
    csv_rows: Callable[[dict[str, Any]], list[dict[str, Any]]]  # one record -> one or more flat rows
    describe: Callable[[dict[str, Any]], str]  # one record -> the table's result cell
    # Records that are not one per image (search hits) name their own table columns; None: path + result.
    table_columns: tuple[str, ...] | None = None
    # The key of a ranked [{label, score}] list that the table shows one per line instead of `describe`.
    table_items: str | None = None


def flat_rows(columns: tuple[str, ...]) -> Callable[[dict[str, Any]], list[dict[str, Any]]]:
    """CSV with one row per image: the record's own value in each column."""
    return lambda record: [{key: record.get(key) for key in columns}]


def explode_rows(list_key: str, item_columns: tuple[str, ...]) -> Callable[[dict[str, Any]], list[dict[str, Any]]]:
    """CSV in long form: one row per prediction/detection, with the image's columns repeated."""

    def rows(record: dict[str, Any]) -> list[dict[str, Any]]:
        base = {k: record.get(k) for k in ("path", "width", "height", "error")}
        entries = record.get(list_key) or []
        if not entries:
            return [base]
        return [{**base, "rank": rank, **{c: entry.get(c) for c in item_columns}} for rank, entry in enumerate(entries, 1)]

    return rows
