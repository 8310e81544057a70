"""The output stage: each input's files all or nothing, results in submission order, cleanup on early stop."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from PIL import Image

from vitkit.errors import InputError, OutputError
from vitkit.outputs.artifacts import Artifacts, ImageFile, OutputStage, complete, write_files


def png(field: str, target: Path, colour: int = 0) -> ImageFile:
    return ImageFile(field, target, Image.new("RGB", (4, 3), (colour, 0, 0)), {"format": "PNG"})


def files_in(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_a_second_file_that_cannot_be_encoded_leaves_nothing(tmp_path: Path) -> None:
    bad = Image.new("RGB", (4, 3))
    bad.info["transparency"] = 0  # Pillow's PNG encoder refuses an int transparency on RGB
    artifacts = Artifacts({"mask": None, "overlay": None, "n": 1},
                          lambda: [png("mask", tmp_path / "a.mask.png"),
                                   ImageFile("overlay", tmp_path / "a.overlay.png", bad, {"format": "PNG"})])
    result, written = complete(artifacts)
    assert isinstance(result, InputError) and result.message.startswith("cannot write its output: ValueError")
    assert written == [] and files_in(tmp_path) == []


def test_a_second_file_that_cannot_be_written_removes_the_first_and_stops_the_run(tmp_path: Path) -> None:
    (tmp_path / "a.overlay.png").mkdir()  # a folder where the file should go: the rename fails
    with pytest.raises(OutputError, match="a.overlay.png"):
        write_files([png("mask", tmp_path / "a.mask.png"), png("overlay", tmp_path / "a.overlay.png")])
    assert files_in(tmp_path) == []  # neither the mask nor a temporary file survives


def test_written_paths_fill_their_fields_in_place(tmp_path: Path) -> None:
    fields, written = complete(Artifacts({"output": None, "fraction": 0.5},
                                         lambda: [png("output", tmp_path / "o.png"), png("grid", tmp_path / "g.png")]))
    assert list(fields.items()) == [("output", str(tmp_path / "o.png")), ("fraction", 0.5),
                                    ("grid", str(tmp_path / "g.png"))]
    assert written == [tmp_path / "o.png", tmp_path / "g.png"]


def test_results_come_back_in_order_whatever_finishes_first(tmp_path: Path) -> None:
    first_may_finish = threading.Event()

    def slow() -> list[ImageFile]:
        assert first_may_finish.wait(10)
        return [png("output", tmp_path / "0.png")]

    def fast(i: int) -> list[ImageFile]:
        if i == 3:
            first_may_finish.set()  # the later ones are done before the first
        return [png("output", tmp_path / f"{i}.png")]

    stage: OutputStage[int] = OutputStage(threads=4, max_pending=100)
    stage.submit(0, Artifacts({}, slow))
    stage.submit(1, {"plain": True})
    for i in (2, 3):
        stage.submit(i, Artifacts({}, lambda i=i: fast(i)))
    got = list(stage.ready()) + list(stage.drain())
    stage.close()
    assert [key for key, _ in got] == [0, 1, 2, 3]
    assert got[1][1] == {"plain": True} and got[3][1] == {"output": str(tmp_path / "3.png")}


def test_an_output_error_comes_in_its_turn_and_unreturned_files_are_removed(tmp_path: Path) -> None:
    (tmp_path / "blocked").write_text("a file where a folder should be")
    stage: OutputStage[int] = OutputStage(threads=1, max_pending=100)
    stage.submit(0, Artifacts({}, lambda: [png("output", tmp_path / "0.png")]))
    stage.submit(1, Artifacts({}, lambda: [png("output", tmp_path / "blocked" / "1.png")]))
    stage.submit(2, Artifacts({}, lambda: [png("output", tmp_path / "2.png")]))
    results = stage.drain()
    assert next(results)[0] == 0
    with pytest.raises(OutputError, match="Not a directory"):
        next(results)
    stage.close()  # 2's file may have been written meanwhile; its record never came back, so it goes
    assert files_in(tmp_path) == ["0.png", "blocked"]
