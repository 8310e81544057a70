"""Input discovery: folders, hidden files, symlink loops, globs and path lists, in a stable order."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from vitkit.inputs.discover import discover_inputs


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def paths(items) -> list[str]:
    return [i.path for i in items]


def test_folder_recursive_sorted_hidden_skipped(tmp_path: Path) -> None:
    for name in ("b.jpg", "a.png", "sub/c.JPG", ".hidden.jpg", "._mac.jpg", ".git/d.jpg", "notes.txt", "sub/z/e.webp"):
        touch(tmp_path / name)
    found = paths(discover_inputs([str(tmp_path)]))
    assert found == [str(tmp_path / n) for n in ("a.png", "b.jpg", "sub/c.JPG", "sub/z/e.webp")]


def test_path_kept_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    touch(tmp_path / "photos" / "a.jpg")
    monkeypatch.chdir(tmp_path)
    assert paths(discover_inputs(["photos/"])) == ["photos/a.jpg"]


def test_symlink_loop_terminates(tmp_path: Path) -> None:
    touch(tmp_path / "a" / "x.jpg")
    os.symlink(tmp_path / "a", tmp_path / "a" / "loop")
    os.symlink(tmp_path, tmp_path / "a" / "up")
    assert paths(discover_inputs([str(tmp_path)])) == [str(tmp_path / "a" / "x.jpg")]


def test_explicit_file_any_extension_and_missing_path(tmp_path: Path) -> None:
    touch(tmp_path / "data.bin")
    items = discover_inputs([str(tmp_path / "data.bin"), str(tmp_path / "nope.jpg")])
    assert items[0].problem is None
    assert items[1].problem == "no such file or directory"


def test_glob_and_no_match(tmp_path: Path) -> None:
    for name in ("a.jpg", "b.jpg", "c.png", "deep/d.jpg"):
        touch(tmp_path / name)
    assert paths(discover_inputs([str(tmp_path / "*.jpg")])) == [str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")]
    assert paths(discover_inputs([str(tmp_path / "**" / "*.jpg")]))[-1] == str(tmp_path / "deep" / "d.jpg")
    assert discover_inputs([str(tmp_path / "*.gif")])[0].problem == "no files match this pattern"


def test_duplicates_dropped_first_kept(tmp_path: Path) -> None:
    a, b = touch(tmp_path / "a.jpg"), touch(tmp_path / "b.jpg")
    assert paths(discover_inputs([str(b), str(a), str(b)])) == [str(b), str(a)]


def test_files_from_lines_and_nul(tmp_path: Path) -> None:
    a, b = touch(tmp_path / "a b.jpg"), touch(tmp_path / "new\nline.jpg")
    listing = tmp_path / "list.txt"
    listing.write_text(f"{a}\n\n{tmp_path / 'a b.jpg'}\n")
    assert paths(discover_inputs([], str(listing))) == [str(a)]
    stdin = io.StringIO(f"{b}\0{a}\0")
    assert paths(discover_inputs([], "-", null_separated=True, stdin=stdin)) == [str(b), str(a)]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder")
def test_unreadable_folder_is_reported(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    touch(locked / "a.jpg")
    locked.chmod(0)
    try:
        [item] = discover_inputs([str(tmp_path)])
        assert item.path == str(locked) and "cannot read folder" in item.problem
    finally:
        locked.chmod(0o755)


def test_extensions_come_from_pillows_registry_and_keep_the_old_ones() -> None:
    from PIL import Image

    from vitkit.inputs.formats import BASE_EXTENSIONS, NOT_PICTURES, picture_extensions

    accepted = picture_extensions()
    assert BASE_EXTENSIONS <= accepted and {".ico", ".tga"} <= accepted
    assert {".mpo", ".jpf", ".jpx", ".j2c", ".avifs", ".qoi", ".psd", ".dds", ".icns", ".pcx"} <= accepted
    assert not {".pdf", ".h5", ".hdf", ".grib", ".bufr", ".mpg", ".mpeg"} & accepted
    registered = Image.registered_extensions()
    assert accepted - BASE_EXTENSIONS == {ext for ext, fmt in registered.items() if fmt not in NOT_PICTURES} - BASE_EXTENSIONS


def test_a_folder_scan_picks_every_readable_format_and_counts_the_rest(tmp_path: Path) -> None:
    for name in ("a.mpo", "b.jpx", "c.qoi", "d.avifs", "e.JPF", "f.j2c", "notes.txt", "model.h5", "doc.pdf",
                 "sub/g.tga", "sub/clip.mpg", ".hidden.txt"):
        touch(tmp_path / name)
    items = discover_inputs([str(tmp_path)])
    assert [os.path.relpath(p, tmp_path) for p in paths(items)] == [
        "a.mpo", "b.jpx", "c.qoi", "d.avifs", "e.JPF", "f.j2c", "sub/g.tga"]
    assert items.skipped_by_extension == 4  # hidden files are not counted: they are never candidates


def test_a_glob_counts_what_it_skips_and_an_explicit_file_is_never_skipped(tmp_path: Path) -> None:
    for name in ("a.png", "b.txt", "c.txt"):
        touch(tmp_path / name)
    items = discover_inputs([str(tmp_path / "*"), str(tmp_path / "b.txt")])
    assert paths(items) == [str(tmp_path / "a.png"), str(tmp_path / "b.txt")]
    assert items.skipped_by_extension == 1  # b.txt was named, so it is an input, not a skipped file
