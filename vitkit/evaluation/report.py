"""How `eval detect` shows its result: a COCO-style summary and one row per category for people (3 decimals),
or one row with full precision for machines (json, jsonl, csv)."""

from __future__ import annotations

from typing import Any

from vitkit.evaluation.detect import DetectorEvaluation

# Names listed in a warning before "and N more"; the JSON row and the table carry all of them.
_NAMES_SHOWN = 8


def evaluation_row(result: DetectorEvaluation) -> dict[str, Any]:
    """The machine-readable result, unrounded."""
    m = result.metrics
    return {"ap": m.ap, "ap50": m.ap50, "ap75": m.ap75, "images": m.num_images, "detections": m.num_detections,
            "failed": result.failed_images, "per_category_ap": m.per_category_ap}


def evaluation_warnings(result: DetectorEvaluation) -> list[str]:
    warnings = []
    if result.unpredictable_categories:
        names = _listed(result.unpredictable_categories)
        count = len(result.unpredictable_categories)
        warnings.append(f"warning: {count} ground-truth categor{'y' if count == 1 else 'ies'} the model cannot "
                        f"predict (no model label of that name or id), each scoring AP 0 in the mean: {names}")
    if result.unmatched_labels:
        warnings.append(f"warning: {len(result.unmatched_labels)} model labels match no ground-truth category: "
                        f"{_listed(result.unmatched_labels)}")
    return warnings


def render_summary(result: DetectorEvaluation) -> str:
    """COCO-style lines, then one row per category in ground-truth order; fits 80 columns."""
    m = result.metrics
    lines = [
        f"Average Precision (AP) @[ IoU=0.50:0.95 | maxDets=100 ] = {m.ap:.3f}",
        f"Average Precision (AP) @[ IoU=0.50      | maxDets=100 ] = {m.ap50:.3f}",
        f"Average Precision (AP) @[ IoU=0.75      | maxDets=100 ] = {m.ap75:.3f}",
        f"images {m.num_images}, detections {m.num_detections}, failed {result.failed_images}",
        "",
    ]
    unpredictable = set(result.unpredictable_categories)
    width = max([len("category"), *(len(name) for name in m.per_category_ap)])
    width = min(width, 60)
    lines.append(f"{'category':<{width}}  AP@[.5:.95]")
    for name, ap in m.per_category_ap.items():
        note = "  (model cannot predict it)" if name in unpredictable else ""
        lines.append(f"{name:<{width}}  {ap:11.3f}{note}")
    return "\n".join(lines) + "\n"


def _listed(names: tuple[str, ...]) -> str:
    shown = ", ".join(names[:_NAMES_SHOWN])
    return shown + (f" and {len(names) - _NAMES_SHOWN} more" if len(names) > _NAMES_SHOWN else "")
