"""Pictures of results: a self-contained static HTML contact sheet (one file, no scripts, no external resources)."""

from __future__ import annotations

import base64
import html
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from vitkit.inputs.decode import DecodeOptions, decode_image
from vitkit.outputs.boxes import draw_detections
from vitkit.errors import InputError, UsageError
from vitkit.outputs.writers import open_output

if TYPE_CHECKING:
    from vitkit.outputs.records import RecordLayout

JPEG_QUALITY = 80
# The page runs nothing and fetches nothing: thumbnails are data: URIs and the only style is inline.
CONTENT_SECURITY_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
# Lone surrogates (undecodable bytes in file names, via os.fsdecode) cannot be written as UTF-8;
# C0 controls other than whitespace would be invisible or parse errors in HTML.
_UNPRINTABLE = re.compile("[\ud800-\udfff\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@dataclass(frozen=True)
class Tile:
    path: str  # shown as the tile's caption and used to make the thumbnail
    lines: tuple[str, ...] = ()  # e.g. ("rank 1", "score 0.312") or ("tabby cat 0.81", "tiger cat 0.10")
    error: str | None = None  # a tile for a failed image shows the error instead of a thumbnail
    # Detections drawn on the thumbnail: {label, class_id, score, box} with the box in the pixels of
    # the image as displayed (the record's width and height), as `detect` writes them.
    boxes: tuple[dict[str, Any], ...] = ()
    source: str | None = None  # the file to make the thumbnail from, where it is not `path` (a library PIL input)


def tile_for_record(record: dict[str, Any], describe: Any, source: str | None = None) -> Tile:
    """A record's tile: its error, or the layout's one-line description and any detections as boxes."""
    if "error" in record:
        return Tile(record["path"], (), record["error"])
    return Tile(record["path"], (describe(record),), boxes=tuple(record.get("detections") or ()), source=source)


@dataclass(frozen=True)
class _Thumbnail:
    data_uri: str
    width: int
    height: int


def write_contact_sheet(output: str | Path, tiles: Sequence[Tile], title: str, subtitle: str = "",
                        thumb_size: int = 192) -> None:
    """One HTML page of thumbnails with captions; it appears complete at `output` or not at all."""
    page = render_contact_sheet(tiles, title, subtitle, thumb_size)
    with open_output(os.fspath(output)) as stream:
        stream.write(page)


def render_contact_sheet(tiles: Sequence[Tile], title: str, subtitle: str = "", thumb_size: int = 192) -> str:
    """The page as text; every surrogate is already replaced, so it always encodes as UTF-8."""
    if thumb_size < 1:
        raise UsageError(f"thumbnail size must be a positive number of pixels, not {thumb_size}")
    body = '<main class="grid">\n' + "\n".join(_render_tile(tile, thumb_size) for tile in tiles) + "\n</main>"
    return _page(title, _render_header(tiles, title, subtitle), body, thumb_size)


def write_group_sheet(output: str | Path, groups: Sequence[tuple[str, Sequence[Tile]]], title: str,
                      subtitle: str = "", thumb_size: int = 192) -> None:
    """One HTML page with a row of tiles per (heading, tiles) group, side by side (dedup's groups)."""
    tiles = [tile for _, group in groups for tile in group]
    body = "\n".join(f'<section class="group">\n<h2>{_text(heading)}</h2>\n<div class="row">\n'
                     + "\n".join(_render_tile(tile, thumb_size) for tile in group) + "\n</div>\n</section>"
                     for heading, group in groups)
    with open_output(os.fspath(output)) as stream:
        stream.write(_page(title, _render_header(tiles, title, subtitle), body, thumb_size))


def _page(title: str, header: str, body: str, thumb_size: int) -> str:
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_text(title)}</title>
<style>{_stylesheet(thumb_size)}</style>
</head>
<body>
{header}
{body}
</body>
</html>
"""


def _make_thumbnail(path: str, thumb_size: int, boxes: Sequence[dict[str, Any]] = ()) -> _Thumbnail:
    """A JPEG data URI no larger than thumb_size on either side, with `boxes` drawn at thumbnail scale;
    raises InputError when the file cannot be read."""
    decoded = decode_image(path, DecodeOptions(draft_size=thumb_size))
    image = decoded.image.copy()  # thumbnail() resizes in place; the decoded image may be shared
    image.thumbnail((thumb_size, thumb_size))
    if boxes:
        image = draw_detections(image, scale_boxes(boxes, image.width / decoded.width, image.height / decoded.height))
    buffer = io.BytesIO()
    # Full-resolution colour (4:4:4) keeps thin coloured box outlines from bleeding into the photo.
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=0 if boxes else -1)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return _Thumbnail(f"data:image/jpeg;base64,{encoded}", image.width, image.height)


def scale_boxes(detections: Sequence[dict[str, Any]], sx: float, sy: float) -> list[dict[str, Any]]:
    """Detections with boxes moved from the full-size image to one resized by (sx, sy)."""
    return [{**d, "box": [d["box"][0] * sx, d["box"][1] * sy, d["box"][2] * sx, d["box"][3] * sy]} for d in detections]


def _render_header(tiles: Sequence[Tile], title: str, subtitle: str) -> str:
    failed = sum(1 for tile in tiles if tile.error is not None)
    count = f"{len(tiles)} image{'' if len(tiles) == 1 else 's'}"
    if failed:
        count += f", {failed} failed"
    parts = [f"<h1>{_text(title)}</h1>"]
    if subtitle:
        parts.append(f'<p class="subtitle">{_text(subtitle)}</p>')
    parts.append(f'<p class="count">{count}</p>')
    return "<header>\n" + "\n".join(parts) + "\n</header>"


def _render_tile(tile: Tile, thumb_size: int) -> str:
    name = _caption_name(tile.path)
    caption = [f'<span class="name">{_text(name)}</span>']
    caption += [f'<span class="line">{_text(line)}</span>' for line in tile.lines]
    return (f'<figure class="tile" title="{_text(tile.path)}">\n'
            f"{_render_picture(tile, name, thumb_size)}\n"
            f"<figcaption>{''.join(caption)}</figcaption>\n"
            "</figure>")


def _render_picture(tile: Tile, name: str, thumb_size: int) -> str:
    if tile.error is not None:
        return f'<div class="frame"><p class="error">{_text(tile.error)}</p></div>'
    try:
        thumbnail = _make_thumbnail(tile.source or tile.path, thumb_size, tile.boxes)
    except InputError as exc:
        return f'<div class="frame"><p class="nopreview">no preview: {_text(exc.one_line())}</p></div>'
    except (OSError, ValueError) as exc:
        # The record itself succeeded; a thumbnail that cannot be encoded must not cost the whole sheet.
        return f'<div class="frame"><p class="nopreview">no preview: {_text(str(exc) or type(exc).__name__)}</p></div>'
    return (f'<div class="frame"><img src="{thumbnail.data_uri}" width="{thumbnail.width}" '
            f'height="{thumbnail.height}" alt="{_text(name)}"></div>')


def _caption_name(path: str) -> str:
    return os.path.basename(path.rstrip("/" + os.sep)) or path


def _text(value: str) -> str:
    return html.escape(_UNPRINTABLE.sub("\ufffd", value), quote=True)


def _stylesheet(thumb_size: int) -> str:
    return f"""
:root {{ color-scheme: light; }}
body {{ margin: 0; padding: 1.5rem; background: #f6f7f9; color: #1f2328;
  font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }}
header {{ margin-bottom: 1.25rem; }}
h1 {{ margin: 0 0 .25rem; font-size: 1.5rem; overflow-wrap: anywhere; }}
.subtitle {{ margin: 0 0 .25rem; color: #424a53; overflow-wrap: anywhere; }}
.count {{ margin: 0; color: #656d76; }}
.grid {{ display: grid; gap: 1rem;
  grid-template-columns: repeat(auto-fill, minmax(min(100%, {thumb_size + 16}px), 1fr)); }}
.tile {{ margin: 0; padding: 8px; background: #fff; border: 1px solid #d0d7de; border-radius: 6px;
  display: flex; flex-direction: column; gap: 6px; min-width: 0; }}
.frame {{ height: {thumb_size}px; display: flex; align-items: center; justify-content: center;
  background: #eef1f4; border-radius: 4px; overflow: hidden; }}
.frame img {{ max-width: 100%; max-height: 100%; width: auto; height: auto; object-fit: contain; }}
.frame p {{ margin: 0; padding: .5rem; font-size: 12px; text-align: center; overflow-wrap: anywhere; }}
.error {{ color: #b42318; }}
.nopreview {{ color: #656d76; font-style: italic; }}
figcaption {{ display: flex; flex-direction: column; min-width: 0; }}
.name {{ font-weight: 600; overflow-wrap: anywhere; }}
.group {{ margin-bottom: 1.5rem; }}
.group h2 {{ margin: 0 0 .5rem; font-size: 1rem; overflow-wrap: anywhere; }}
.row {{ display: flex; gap: 1rem; overflow-x: auto; }}
.row .tile {{ flex: 0 0 {thumb_size + 16}px; }}
.line {{ color: #424a53; font-variant-numeric: tabular-nums; overflow-wrap: anywhere; }}
"""


class ContactSheetSink:
    """The `--html` sheet of a run: every record's tile, written when the run ends."""

    def __init__(self, path: str, layout: "RecordLayout", subtitle: str, sources: dict[str, str] | None = None) -> None:
        self.path, self.layout, self.subtitle, self.sources = path, layout, subtitle, sources or {}
        self.records: list[dict[str, Any]] = []

    def add(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def close(self) -> None:
        write_sheet(self.path, self.records, self.layout, self.subtitle, self.sources)


def write_sheet(path: str, records: list[dict], layout: "RecordLayout", subtitle: str,
                sources: dict[str, str] | None = None) -> None:
    tiles = [tile_for_record(r, layout.describe, (sources or {}).get(r["path"])) for r in records]
    write_contact_sheet(path, tiles, title="vitkit results", subtitle=subtitle)
