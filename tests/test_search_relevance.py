"""`vitkit search --min-score / --relative / --collapse-duplicates`: applied after ranking, through the CLI and the library."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.conftest import SAMPLE_DATA, parse_jsonl
from vitkit.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def photos_with_copies(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The sample photos plus, for coffee.jpg, a byte copy and a JPEG q=60 copy; and an index of them."""
    folder = tmp_path_factory.mktemp("relevance") / "photos"
    shutil.copytree(SAMPLE_DATA, folder)
    (folder / "copies").mkdir()
    shutil.copy(SAMPLE_DATA / "coffee.jpg", folder / "copies" / "coffee.jpg")
    Image.open(SAMPLE_DATA / "coffee.jpg").save(folder / "copies" / "coffee-q60.jpg", quality=60)
    return folder, tmp_path_factory.mktemp("relevance-index") / "idx"


def search(folder: Path, index_dir: Path, model: Path, *args: str) -> tuple[list[dict], str]:
    result = runner.invoke(app, ["search", str(folder), "--model", str(model), "--index", str(index_dir),
                                 "--format", "jsonl", *args])
    assert result.exit_code == 0, result.stderr
    return parse_jsonl(result.stdout), result.stderr


def test_min_score_and_relative_filter_the_ranking(photos_with_copies, tiny_open_clip_dir: Path) -> None:
    folder, index_dir = photos_with_copies
    ranked, _ = search(folder, index_dir, tiny_open_clip_dir, "--text", "a cup of coffee", "-k", "20")
    assert len(ranked) == 8
    scores = [hit["score"] for hit in ranked]
    middle = (scores[2] + scores[3]) / 2
    floored, _ = search(folder, index_dir, tiny_open_clip_dir, "--text", "a cup of coffee", "-k", "20",
                        "--min-score", str(middle))
    assert floored == ranked[:3]
    margin = (scores[0] - scores[4] + scores[0] - scores[5]) / 2  # between the 5th and 6th hits
    relative, _ = search(folder, index_dir, tiny_open_clip_dir, "--text", "a cup of coffee", "-k", "20",
                         "--relative", str(margin))
    assert relative == ranked[:5]
    nothing, stderr = search(folder, index_dir, tiny_open_clip_dir, "--text", "a cup of coffee", "--min-score", "1.5")
    assert nothing == [] and "nothing relevant" in stderr
    bad = runner.invoke(app, ["search", "--text", "x", "--index", str(index_dir), "--relative", "-0.1"])
    assert bad.exit_code == 2 and "--relative" in bad.stderr


def test_collapse_duplicates_keeps_the_best_hit_of_each_group(photos_with_copies, tiny_open_clip_dir: Path) -> None:
    folder, index_dir = photos_with_copies
    query = ["--image", str(folder / "coffee.jpg"), "-k", "20"]
    ranked, _ = search(folder, index_dir, tiny_open_clip_dir, *query)
    collapsed, _ = search(folder, index_dir, tiny_open_clip_dir, *query, "--collapse-duplicates")
    coffee = {str(folder / "coffee.jpg"), str(folder / "copies" / "coffee.jpg"), str(folder / "copies" / "coffee-q60.jpg")}
    # The three coffee files become their best-ranked one; every other photo is a group of its own. The
    # tiny random model puts distinct photos above dedup's default 0.97 now and then: those merge too.
    first_coffee = next(hit for hit in ranked if hit["path"] in coffee)
    assert collapsed[0]["path"] == first_coffee["path"] and collapsed[0]["rank"] == 1
    assert set(collapsed[0]["duplicates"]) >= coffee - {first_coffee["path"]}
    kept_and_folded = [hit["path"] for hit in collapsed] + [p for hit in collapsed for p in hit["duplicates"]]
    assert sorted(kept_and_folded) == sorted(hit["path"] for hit in ranked)  # nothing lost, nothing twice
    by_path = {hit["path"]: hit["score"] for hit in ranked}
    assert [hit["score"] for hit in collapsed] == [by_path[hit["path"]] for hit in collapsed]
    assert [hit["rank"] for hit in collapsed] == list(range(1, len(collapsed) + 1))
    for hit in collapsed:  # each kept hit outranks what it folded in
        assert all(by_path[p] <= hit["score"] for p in hit["duplicates"])


def test_library_relevance_options(photos_with_copies, tiny_open_clip_dir: Path) -> None:
    import vitkit

    folder, index_dir = photos_with_copies
    common = dict(model=str(tiny_open_clip_dir), index_dir=str(index_dir), top_k=20)
    ranked = list(vitkit.search("a rocket", **common))
    assert [h.path for h in vitkit.search("a rocket", relative=0.0, **common)] == \
        [h.path for h in ranked if h.score >= ranked[0].score]
    assert list(vitkit.search("a rocket", min_score=1.5, quiet=True, **common)) == []
    collapsed = list(vitkit.search(image=str(folder / "copies" / "coffee.jpg"), collapse_duplicates=True, **common))
    assert len(collapsed) < len(ranked) and all(isinstance(h.duplicates, list) for h in collapsed)
    with pytest.raises(vitkit.VitkitError, match="min-score"):
        list(vitkit.search("a rocket", min_score=float("nan"), **common))
