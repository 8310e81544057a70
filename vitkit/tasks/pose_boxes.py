"""Where `vitkit pose` gets its person boxes when no detector runs: `--boxes-from FILE` (vitkit detect's
JSON lines, or a COCO JSON file with its images list) or `--whole-image`.

A file names its images by path (`path` of a detect record, `file_name` of a COCO image); an input
takes the boxes of the entry whose name is its path as given, else its absolute path, else the entry
whose name ends the input's path at a folder boundary (`val2017/0001.jpg` and `0001.jpg` both match
`data/coco/val2017/0001.jpg`; more than one such entry is that input's error).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from vitkit.errors import UsageError


@dataclass(frozen=True)
class PersonBox:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in displayed (EXIF-oriented) pixels
    score: float | None  # the detector's; None where the boxes are given (ground truth, --whole-image)


@dataclass(frozen=True)
class Unmatched:
    """Why an input has no entry in the boxes file: its error message."""

    message: str


def read_boxes_file(path: str, person_class: str, threshold: float | None) -> dict[str, list[PersonBox]]:
    """Entry name -> its person boxes (of `person_class`, scoring at least `threshold` where given)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"cannot read --boxes-from {path}: {error}") from error
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        document = None  # not one JSON document: JSON lines
    if isinstance(document, dict) and "images" in document:
        try:
            found = _from_coco(document, person_class, path)
        except (KeyError, TypeError, ValueError) as error:
            raise UsageError(f"--boxes-from {path} is not a well-formed COCO file ({type(error).__name__}: {error})",
                             hint="every annotation needs a bbox and an image_id listed in images") from error
    elif isinstance(document, list):
        raise UsageError(f"--boxes-from {path} is a COCO results list, which names images by id only",
                         hint="give a COCO file with its images list (`vitkit detect --coco` writes one) or "
                              "detect's JSON lines (-o boxes.jsonl)")
    else:
        found = _from_records(text.splitlines(), person_class, path)
    # A box with no area (detect clips a box outside the image to nothing) or not finite holds no person,
    # and the processor's crop of it would be NaN.
    found = {name: [p for p in people if _has_area(p.box)] for name, people in found.items()}
    if threshold is None:
        return found
    return {name: [p for p in people if p.score is None or p.score >= threshold] for name, people in found.items()}


def _has_area(box: tuple[float, ...]) -> bool:
    return len(box) == 4 and all(math.isfinite(v) for v in box) and box[2] > box[0] and box[3] > box[1]


def _from_coco(document: dict[str, Any], person_class: str, path: str) -> dict[str, list[PersonBox]]:
    categories = {int(c["id"]) for c in document.get("categories", []) if c.get("name") == person_class}
    if not categories:
        raise UsageError(f"--boxes-from {path} has no category named {person_class!r}",
                         hint="name the class its person boxes have with --person-class")
    names = {int(image["id"]): str(image["file_name"]) for image in document["images"]}
    found: dict[str, list[PersonBox]] = {name: [] for name in names.values()}
    for annotation in document.get("annotations", []):
        if int(annotation.get("category_id", -1)) not in categories or annotation.get("iscrowd"):
            continue  # a crowd region is not one person
        x, y, width, height = (float(v) for v in annotation["bbox"])
        score = annotation.get("score")
        found[names[int(annotation["image_id"])]].append(
            PersonBox((x, y, x + width, y + height), None if score is None else float(score)))
    return found


def _from_records(lines: Iterable[str], person_class: str, path: str) -> dict[str, list[PersonBox]]:
    found: dict[str, list[PersonBox]] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if "error" in record:
                continue  # detect could not read it: the input stays unmatched
            found[str(record["path"])] = [
                PersonBox(tuple(float(v) for v in d["box"]), float(d["score"]) if d.get("score") is not None else None)
                for d in record.get("detections", []) if d.get("label") == person_class]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise UsageError(f"--boxes-from {path} line {number} is not a vitkit detect record ({error})",
                             hint="give detect's JSON lines (-o boxes.jsonl) or a COCO JSON file") from error
    return found


def match_boxes(found: dict[str, list[PersonBox]], inputs: Iterable[str]) -> dict[str, list[PersonBox] | Unmatched]:
    """Each input's person boxes by the rules in this module's docstring."""
    by_absolute = {os.path.abspath(name): name for name in found}
    by_basename: dict[str, list[str]] = {}
    for name in found:
        by_basename.setdefault(os.path.basename(name), []).append(name)
    matched: dict[str, list[PersonBox] | Unmatched] = {}
    for path in inputs:
        name = path if path in found else by_absolute.get(os.path.abspath(path))
        if name is None:
            whole = path.replace(os.sep, "/")
            ends = [n for n in by_basename.get(os.path.basename(path), [])
                    if whole == n or whole.endswith("/" + n.replace(os.sep, "/").lstrip("/"))]
            if len(ends) > 1:
                matched[path] = Unmatched(f"--boxes-from names this image {len(ends)} ways: {', '.join(ends[:3])}")
                continue
            name = ends[0] if ends else None
        matched[path] = found[name] if name is not None else Unmatched("not in the --boxes-from file")
    return matched
