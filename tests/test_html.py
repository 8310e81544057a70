"""The HTML contact sheet: user text always escaped, broken files never fatal, and a real browser renders it safely."""

from __future__ import annotations

import base64
import html
import io
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import BROKEN_SAMPLES, SAMPLE_DATA, SAMPLE_ERRORS
from vitkit.errors import UsageError
from vitkit.outputs.html import Tile, render_contact_sheet, tile_for_record, write_contact_sheet

# "/" cannot be part of a POSIX file name, so this one is a folder "<script>alert(1)<" holding "script>.jpg";
# SCRIPT_NAME is the nearest name one file can really have, and still opens a script element if left unescaped.
SCRIPT_PATH_TAIL = "<script>alert(1)</script>.jpg"
ESCAPED_SCRIPT_PATH_TAIL = "&lt;script&gt;alert(1)&lt;/script&gt;.jpg"
SCRIPT_NAME = "<script>alert(1)<script>.jpg"
ESCAPED_SCRIPT_NAME = "&lt;script&gt;alert(1)&lt;script&gt;.jpg"
NON_UTF8_NAME = os.fsdecode(b"caf\xe9.jpg")
MAGENTA = (255, 0, 255)  # appears nowhere in the page's own styles, so it on screen means a thumbnail rendered
BROWSER_TIMEOUT_S = 60


class SheetSummary(HTMLParser):
    """What a reader of the page would see: tiles, image sources, caption texts, and any script element."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tiles = 0
        self.img_sources: list[str] = []
        self.script_tags = 0
        self.captions: list[str] = []
        self._caption_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "figure" and "tile" in (attributes.get("class") or "").split():
            self.tiles += 1
        elif tag == "img":
            self.img_sources.append(attributes.get("src") or "")
        elif tag == "script":
            self.script_tags += 1
        elif tag == "figcaption":
            self._caption_depth += 1
            self.captions.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "figcaption":
            self._caption_depth -= 1

    def handle_data(self, data: str) -> None:
        if self._caption_depth:
            self.captions[-1] += data


def summarise(page: str) -> SheetSummary:
    summary = SheetSummary()
    summary.feed(page)
    summary.close()
    return summary


def gradient(size: tuple[int, int] = (96, 64)) -> Image.Image:
    """Many distinct colours, so a rendered thumbnail is easy to tell from a blank box."""
    width, height = size
    image = Image.new("RGB", size)
    image.putdata([(x * 255 // width, y * 255 // height, 128) for y in range(height) for x in range(width)])
    return image


def make_script_named_photos(folder: Path) -> tuple[Path, Path]:
    """Real JPEGs at <folder>/<script>alert(1)</script>.jpg and <folder>/<script>alert(1)<script>.jpg."""
    nested, single = folder / SCRIPT_PATH_TAIL, folder / SCRIPT_NAME
    nested.parent.mkdir(parents=True, exist_ok=True)
    for path in (nested, single):
        gradient((64, 96)).save(path, format="JPEG")
    return nested, single


def write_sheet(tmp_path: Path, tiles: list[Tile], **kwargs) -> str:
    output = tmp_path / "sheet.html"
    write_contact_sheet(output, tiles, kwargs.pop("title", "results"), **kwargs)
    return output.read_bytes().decode("utf-8")  # strict: the file must be valid UTF-8


def escaped_path(path: Path) -> str:
    return html.escape(str(path), quote=True)


def decode_data_uri(uri: str) -> Image.Image:
    prefix = "data:image/jpeg;base64,"
    assert uri.startswith(prefix)
    return Image.open(io.BytesIO(base64.b64decode(uri[len(prefix):])))


def test_user_text_is_escaped_everywhere(tmp_path: Path) -> None:
    nested, single = make_script_named_photos(tmp_path)
    tiles = [
        Tile(str(single), lines=('<img src=x onerror="alert(2)">', "score 0.5 & more")),
        Tile(str(nested)),
        Tile(str(tmp_path / 'quote".jpg'), error="<script>alert(3)</script>"),
    ]
    page = write_sheet(tmp_path, tiles, title="<b>title</b>", subtitle="<i>sub</i> & 'friends'")

    assert "<script" not in page.lower()
    assert f">{ESCAPED_SCRIPT_NAME}</span>" in page  # the caption
    assert f'title="{escaped_path(nested)}"' in page and escaped_path(nested).endswith(ESCAPED_SCRIPT_PATH_TAIL)
    assert "&lt;b&gt;title&lt;/b&gt;" in page and "&lt;i&gt;sub&lt;/i&gt; &amp; &#x27;friends&#x27;" in page
    assert "&lt;img src=x onerror=&quot;alert(2)&quot;&gt;" in page and "score 0.5 &amp; more" in page
    assert 'quote&quot;.jpg"' in page  # the full path in the title attribute cannot close the attribute early
    summary = summarise(page)
    assert summary.script_tags == 0
    assert len(summary.img_sources) == 2 and all(s.startswith("data:image/jpeg;base64,") for s in summary.img_sources)
    assert summary.captions[0].startswith(SCRIPT_NAME) and summary.captions[1] == "script>.jpg"


def test_page_is_self_contained(tmp_path: Path) -> None:
    photo = tmp_path / "a.png"
    gradient().save(photo)
    page = write_sheet(tmp_path, [Tile(str(photo))])

    assert '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; ' in page
    assert all(source.startswith("data:") for source in summarise(page).img_sources)
    assert not re.search(r"(?:src|href)\s*=\s*\"(?!data:)", page)
    assert "http://" not in page and "https://" not in page and "@import" not in page


def test_tile_count_and_header(tmp_path: Path) -> None:
    paths = []
    for index in range(3):
        paths.append(tmp_path / f"p{index}.png")
        gradient().save(paths[-1])
    tiles = [Tile(str(p), lines=(f"rank {i + 1}", "score 0.312")) for i, p in enumerate(paths)]
    page = write_sheet(tmp_path, tiles, title="search", subtitle="query: a cat")

    summary = summarise(page)
    assert summary.tiles == page.count('<figure class="tile"') == 3
    assert len(summary.img_sources) == 3
    assert "3 images" in page and "query: a cat" in page
    assert summary.captions == [f"p{i}.pngrank {i + 1}score 0.312" for i in range(3)]
    assert f'title="{paths[0]}"' in page  # the full path, while the caption shows only the name


def test_error_tiles_show_the_error_instead_of_a_thumbnail(tmp_path: Path) -> None:
    good = tmp_path / "good.jpg"
    gradient().save(good)
    tiles = [Tile(str(good)), Tile(str(good), error="truncated image data (file cut short)")]
    page = write_sheet(tmp_path, tiles)

    summary = summarise(page)
    assert summary.tiles == 2 and len(summary.img_sources) == 1
    assert '<p class="error">truncated image data (file cut short)</p>' in page
    assert "2 images, 1 failed" in page


@pytest.mark.parametrize("name", BROKEN_SAMPLES)
def test_broken_file_gets_a_no_preview_tile(tmp_path: Path, name: str) -> None:
    tiles = [Tile(str(SAMPLE_ERRORS / name)), Tile(str(tmp_path / "missing.jpg"))]
    page = write_sheet(tmp_path, tiles)

    summary = summarise(page)
    assert summary.tiles == 2 and summary.img_sources == []
    assert page.count("no preview: ") == 2
    assert "no preview: no such file" in page


def test_empty_file_reason_is_shown(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jpg"
    empty.touch()
    page = write_sheet(tmp_path, [Tile(str(empty))])
    assert "no preview: empty file (0 bytes)" in page


def test_non_utf8_file_name_does_not_crash(tmp_path: Path) -> None:
    raw = os.path.join(os.fsencode(tmp_path), b"caf\xe9.jpg")
    gradient().save(raw, format="JPEG")
    path = os.path.join(str(tmp_path), NON_UTF8_NAME)
    page = write_sheet(tmp_path, [Tile(path, lines=(NON_UTF8_NAME,)), Tile(path, error=f"bad {NON_UTF8_NAME}")])

    summary = summarise(page)
    assert summary.tiles == 2 and len(summary.img_sources) == 1  # the surrogate path still opens the real file
    assert "caf\ufffd.jpg" in summary.captions[0]
    assert "bad caf\ufffd.jpg" in page


def test_thumbnails_fit_the_requested_size(tmp_path: Path) -> None:
    wide = tmp_path / "wide.jpg"
    gradient((800, 200)).save(wide, quality=90)
    page = write_sheet(tmp_path, [Tile(str(wide))], thumb_size=64)

    thumbnail = decode_data_uri(summarise(page).img_sources[0])
    assert thumbnail.format == "JPEG" and thumbnail.size == (64, 16)
    assert 'width="64" height="16"' in page


def test_exif_orientation_is_applied_to_thumbnails(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed portrait
    photo = tmp_path / "rotated.jpg"
    gradient((80, 40)).save(photo, exif=exif.tobytes())
    page = write_sheet(tmp_path, [Tile(str(photo))], thumb_size=32)
    assert decode_data_uri(summarise(page).img_sources[0]).size == (16, 32)


def test_write_replaces_atomically_and_leaves_no_temp_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    output = tmp_path / "sheet.html"
    output.write_text("old page")
    write_contact_sheet(output, [Tile("nowhere.jpg", error="x")], "new")
    assert "<h1>new</h1>" in output.read_text()

    def crash(*args, **kwargs) -> str:
        raise RuntimeError("crashed mid-render")

    monkeypatch.setattr("vitkit.outputs.html._render_tile", crash)
    with pytest.raises(RuntimeError):
        write_contact_sheet(output, [Tile("nowhere.jpg")], "newer")
    assert "<h1>new</h1>" in output.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sheet.html"]


def test_render_without_writing_and_bad_size() -> None:
    page = render_contact_sheet([], "empty run")
    assert "0 images" in page and summarise(page).tiles == 0
    with pytest.raises(UsageError):
        write_contact_sheet("unused.html", [], "x", thumb_size=0)


# --- a real browser -------------------------------------------------------------------------------------------


def find_chromium() -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium); browser rendering not checked")
    return binary


def run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={profile}"]
    # A clean HOME keeps the browser from reading or writing the developer's own configuration.
    env = {**os.environ, "HOME": str(profile)}
    return subprocess.run([binary, *flags, *args], capture_output=True, text=True, errors="replace",
                          timeout=BROWSER_TIMEOUT_S, env=env)


@pytest.fixture
def browser_sheet(tmp_path: Path) -> tuple[Path, int]:
    """A sheet of real files: a gradient, a solid-colour PNG, the malicious name, a broken file and a failure."""
    photos = tmp_path / "photos"
    photos.mkdir()
    gradient((640, 480)).save(photos / "gradient.jpg", quality=90)
    Image.new("RGB", (120, 90), MAGENTA).save(photos / "magenta.png")
    nested, single = make_script_named_photos(photos)
    (photos / "empty.jpg").touch()
    tiles = [Tile(str(photos / "gradient.jpg"), lines=("tabby cat 0.81", "tiger cat 0.10")),
             Tile(str(photos / "magenta.png"), lines=("rank 2", "score 0.312")),
             Tile(str(single), lines=("<script>alert(2)</script>",)),
             Tile(str(nested)),
             Tile(str(photos / "empty.jpg")),
             Tile(str(photos / "gone.jpg"), error="no such file (or a broken link)")]
    output = tmp_path / "sheet.html"
    write_contact_sheet(output, tiles, "<script>alert(0)</script> results", subtitle="model: vit-b16")
    return output, len(tiles)


def test_chromium_renders_the_sheet_safely(tmp_path: Path, browser_sheet: tuple[Path, int]) -> None:
    binary = find_chromium()
    sheet, tile_count = browser_sheet

    dumped = run_chromium(binary, tmp_path / "profile", "--dump-dom", sheet.as_uri())
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    dom = summarise(dumped.stdout)
    assert dom.tiles == tile_count
    assert len(dom.img_sources) == 4 and all(source.startswith("data:image/jpeg;base64,") for source in dom.img_sources)
    assert dom.script_tags == 0 and not re.search(r"<script\b", dumped.stdout, re.IGNORECASE)
    assert f'<span class="name">{ESCAPED_SCRIPT_NAME}</span>' in dumped.stdout
    assert ESCAPED_SCRIPT_PATH_TAIL + '"' in dumped.stdout  # the end of the nested file's title attribute
    assert any(caption.startswith(SCRIPT_NAME) for caption in dom.captions)
    assert sum("no preview: empty file" in caption for caption in dumped.stdout.split("<figure")) == 1

    screenshot = tmp_path / "sheet.png"
    shot = run_chromium(binary, tmp_path / "profile", f"--screenshot={screenshot}", "--window-size=1200,900",
                        "--hide-scrollbars", sheet.as_uri())
    assert shot.returncode == 0 and screenshot.is_file(), shot.stderr[-2000:]
    with Image.open(screenshot) as image:
        assert image.size == (1200, 900)
        pixels = image.convert("RGB")
    colours = pixels.getcolors(maxcolors=1 << 24)
    assert len(colours) > 256  # the gradient thumbnail alone has hundreds; a blank page has a handful
    magenta = sum(count for count, (r, g, b) in colours if r > 200 and g < 60 and b > 200)
    assert magenta > 1000  # the data: thumbnail really rendered under the page's Content-Security-Policy


def close_to(pixel: tuple[int, ...], colour: tuple[int, int, int], tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, colour))


def test_detection_boxes_are_drawn_on_the_thumbnail_at_its_scale(tmp_path: Path) -> None:
    """A box given in full-size pixels lands on the same spot of the 192 px thumbnail, in its class colour."""
    from vitkit.outputs.boxes import colour_for

    photo = tmp_path / "grey.jpg"
    Image.new("RGB", (1000, 500), (128, 128, 128)).save(photo, quality=95)
    record = {"path": str(photo), "width": 1000, "height": 500,
              "detections": [{"label": "cat", "class_id": 3, "score": 0.9, "box": [500, 250, 900, 450]}]}
    tile = tile_for_record(record, lambda r: "cat 0.90")
    assert tile.lines == ("cat 0.90",) and tile.boxes == tuple(record["detections"])
    thumbnail = decode_data_uri(summarise(write_sheet(tmp_path, [tile])).img_sources[0]).convert("RGB")
    assert thumbnail.size == (192, 96)
    box_colour = colour_for(3)
    # The box maps to x 96..172.8, y 48..86.4 on the thumbnail.
    assert close_to(thumbnail.getpixel((172, 70)), box_colour)  # right edge
    assert close_to(thumbnail.getpixel((130, 86)), box_colour)  # bottom edge
    assert close_to(thumbnail.getpixel((140, 75)), (128, 128, 128))  # inside the box: the photo
    assert close_to(thumbnail.getpixel((30, 30)), (128, 128, 128))  # outside it
    plain = decode_data_uri(summarise(write_sheet(tmp_path, [Tile(str(photo))])).img_sources[0]).convert("RGB")
    assert close_to(plain.getpixel((172, 70)), (128, 128, 128))  # no boxes without detections


def test_error_record_tile_shows_its_error() -> None:
    tile = tile_for_record({"path": "x.jpg", "error": "empty file (0 bytes)"}, lambda r: "unused")
    assert tile == Tile("x.jpg", (), "empty file (0 bytes)")


def test_detect_html_sheet_shows_the_boxes(tiny_detr_dir: Path, tmp_path: Path) -> None:
    """`detect --html`: each thumbnail carries that image's boxes (it used to show the bare photos)."""
    from typer.testing import CliRunner

    from tests.conftest import parse_jsonl
    from vitkit.cli import app

    sheet = tmp_path / "sheet.html"
    photo = str(SAMPLE_DATA / "rocket.jpg")
    result = CliRunner().invoke(app, ["detect", photo, "--model", str(tiny_detr_dir), "--threshold", "0.0",
                                      "--max-detections", "3", "--html", str(sheet)])
    assert result.exit_code == 0, result.stderr
    [record] = parse_jsonl(result.stdout)
    assert len(record["detections"]) == 3
    with_boxes = decode_data_uri(summarise(sheet.read_text()).img_sources[0]).convert("RGB")
    bare = decode_data_uri(summarise(render_contact_sheet([Tile(photo)], "t")).img_sources[0]).convert("RGB")
    assert with_boxes.size == bare.size
    import numpy as np

    difference = np.abs(np.asarray(with_boxes, dtype=int) - np.asarray(bare, dtype=int)).max(axis=2)
    differing = int((difference > 40).sum())
    assert differing > 200  # outlines and label tabs, not JPEG noise
