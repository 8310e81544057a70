"""Duplicate groups (dedup) as records, as a summary for people, and as a side-by-side HTML sheet."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from vitkit.outputs.records import RecordLayout

if TYPE_CHECKING:
    from vitkit.retrieval.dedup import DuplicateGroup


def _csv_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    # Long form: one row per duplicate, with its group and kept file repeated.
    return [{"group": record["group"], "keep": record["keep"], **d} for d in record["duplicates"]]


DEDUP_LAYOUT = RecordLayout(
    csv_columns=("group", "keep", "path", "tier", "score"),
    csv_rows=_csv_rows,
    describe=lambda record: f"{len(record['duplicates'])} duplicates",
    table_columns=("group", "keep", "duplicates"),
)


def group_records(groups: Sequence[DuplicateGroup]) -> list[dict[str, Any]]:
    """`{group, keep, duplicates: [{path, tier, score}]}`, groups numbered from 1."""
    return [{"group": number, "keep": group.keep,
             "duplicates": [{"path": d.path, "tier": d.tier, "score": d.score} for d in group.duplicates]}
            for number, group in enumerate(groups, 1)]


def removable_rows(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every duplicate's path (never a kept file), for --paths-only."""
    return [{"path": d["path"]} for record in records for d in record["duplicates"]]


def describe_groups(records: Sequence[dict[str, Any]], scanned: int) -> str:
    """The table format's text: each group's kept file, then its duplicates with tier and score."""
    if not records:
        return f"no duplicates among {scanned} files\n"
    lines = []
    for record in records:
        lines.append(f"group {record['group']}  keep {record['keep']}")
        lines += [f"  {d['tier']:<8} {d['score']:.3f}  {d['path']}" for d in record["duplicates"]]
    removable = sum(len(record["duplicates"]) for record in records)
    lines.append(f"{len(records)} groups, {removable} removable files among {scanned}")
    return "\n".join(lines) + "\n"


def write_group_page(path: str, records: Sequence[dict[str, Any]], subtitle: str) -> None:
    from vitkit.outputs.html import Tile, write_group_sheet

    groups = [(f"group {record['group']}",
               [Tile(record["keep"], ("keep",))]
               + [Tile(d["path"], (f"{d['tier']} {d['score']:.3f}",)) for d in record["duplicates"]])
              for record in records]
    write_group_sheet(path, groups, title="vitkit duplicates", subtitle=subtitle)
