"""`vitkit dedup` end to end: copies of the sample photos group with their original, by tier; keep rules; piping."""

from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.conftest import GOOD_SAMPLES, SAMPLE_DATA, parse_jsonl
from vitkit.cli import app

runner = CliRunner()
NO_SIMILAR = "1.01"  # a cosine no pair reaches: only the exact and near tiers group


def make_variants(folder: Path) -> dict[str, dict[str, Path]]:
    """Per sample photo: the original, a byte copy, and JPEG q=60, 50%, 5%-cropped and EXIF-rotated copies."""
    made: dict[str, dict[str, Path]] = {}
    (folder / "copies").mkdir(parents=True)
    (folder / "variants").mkdir()
    for name in GOOD_SAMPLES:
        stem = Path(name).stem
        image = Image.open(SAMPLE_DATA / name).convert("RGB")
        w, h = image.size
        paths = {"original": folder / name, "copy": folder / "copies" / name}
        shutil.copy(SAMPLE_DATA / name, paths["original"])
        shutil.copy(SAMPLE_DATA / name, paths["copy"])
        paths["q60"] = folder / "variants" / f"{stem}-q60.jpg"
        image.save(paths["q60"], quality=60)
        paths["half"] = folder / "variants" / f"{stem}-half.jpg"
        image.resize((w // 2, h // 2), Image.Resampling.LANCZOS).save(paths["half"], quality=90)
        paths["crop"] = folder / "variants" / f"{stem}-crop.jpg"
        image.crop((0, 0, round(w * 0.95), round(h * 0.95))).save(paths["crop"], quality=90)
        # Stored turned a quarter; the EXIF orientation (6: rotate 90 clockwise to display) turns it back.
        exif = Image.Exif()
        exif[0x0112] = 6
        paths["exif"] = folder / "variants" / f"{stem}-exif.jpg"
        image.transpose(Image.Transpose.ROTATE_90).save(paths["exif"], quality=60, exif=exif)
        made[name] = paths
    return made


@pytest.fixture(scope="module")
def duplicates(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, Path]]]:
    folder = tmp_path_factory.mktemp("dedup") / "photos"
    return folder, make_variants(folder)


@pytest.fixture(scope="module")
def dedup_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dedup-index") / "idx"


def dedup_cmd(folder: Path, model: Path, index_dir: Path, *extra: str) -> list[dict]:
    result = runner.invoke(app, ["dedup", str(folder), "--model", str(model), "--index", str(index_dir),
                                 "--format", "jsonl", *extra])
    assert result.exit_code == 0, result.stderr
    return parse_jsonl(result.stdout)


def test_copies_group_with_their_original_by_tier(duplicates, dedup_index: Path, tiny_open_clip_dir: Path) -> None:
    folder, made = duplicates
    groups = dedup_cmd(folder, tiny_open_clip_dir, dedup_index, "--threshold", NO_SIMILAR)
    assert [g["group"] for g in groups] == list(range(1, len(GOOD_SAMPLES) + 1))
    owner = {str(p): name for name, paths in made.items() for p in paths.values()}
    for group in groups:
        names = {owner[group["keep"]]} | {owner[d["path"]] for d in group["duplicates"]}
        assert len(names) == 1, f"distinct photos grouped by exact/near: {group}"  # never across photos
        paths = made[names.pop()]
        # Largest pixel count, then largest file: the original or its byte copy (same size; first path wins).
        assert group["keep"] == str(min(paths["original"], paths["copy"], key=str))
        tiers = {d["path"]: d["tier"] for d in group["duplicates"]}
        assert sorted(tiers) == sorted(str(p) for p in paths.values() if str(p) != group["keep"])
        for kind, path in paths.items():
            if str(path) != group["keep"]:
                assert tiers[str(path)] == ("exact" if kind in ("original", "copy") else "near"), (kind, group)
        exact = [d for d in group["duplicates"] if d["tier"] == "exact"]
        assert [d["score"] for d in exact] == [1.0]
        assert all(-1.0 <= d["score"] <= 1.0 + 1e-6 for d in group["duplicates"])
        order = [("exact", "near", "similar").index(d["tier"]) for d in group["duplicates"]]
        assert order == sorted(order)


def test_similar_tier_matches_brute_force_cosines(dedup_index: Path, tiny_open_clip_dir: Path, tmp_path: Path) -> None:
    """Distinct photos only: the groups are the connected components of cosine >= threshold, computed
    here from vitkit.embed's vectors (float16-rounded, as the index stores them) over all pairs."""
    import vitkit

    folder = tmp_path / "distinct"
    shutil.copytree(SAMPLE_DATA, folder)
    paths = sorted(str(p) for p in folder.glob("*.jpg"))
    vectors = np.stack([r.embedding for r in vitkit.embed(paths, model=str(tiny_open_clip_dir))])
    vectors = vectors.astype(np.float16).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    cosines = vectors @ vectors.T
    pairs = sorted(cosines[i, j] for i, j in itertools.combinations(range(len(paths)), 2))
    threshold = float((pairs[-1] + pairs[-2]) / 2)  # only the closest pair of distinct photos passes
    groups = dedup_cmd(folder, tiny_open_clip_dir, tmp_path / "idx", "--threshold", f"{threshold:.6f}")
    i, j = np.unravel_index(np.argmax(np.triu(cosines, 1)), cosines.shape)
    assert len(groups) == 1
    [group] = groups
    assert {group["keep"], group["duplicates"][0]["path"]} == {paths[i], paths[j]}
    assert group["duplicates"][0]["tier"] == "similar"
    assert group["duplicates"][0]["score"] == pytest.approx(float(cosines[i, j]), abs=2e-3)


@pytest.mark.parametrize("rule", ["oldest", "newest", "shortest-path"])
def test_keep_rules(rule: str, tiny_open_clip_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    (folder / "a" / "deeper").mkdir(parents=True)
    copies = [folder / "coffee.jpg", folder / "a" / "coffee-2.jpg", folder / "a" / "deeper" / "c.jpg"]
    for age, path in zip((100, 300, 200), copies):  # hours ago
        shutil.copy(SAMPLE_DATA / "coffee.jpg", path)
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns - age * 3_600_000_000_000))
    [group] = dedup_cmd(folder, tiny_open_clip_dir, tmp_path / "idx", "--keep", rule)
    expected = {"oldest": copies[1], "newest": copies[0], "shortest-path": copies[0]}[rule]
    assert group["keep"] == str(expected)
    assert sorted(d["path"] for d in group["duplicates"]) == sorted(str(p) for p in copies if p != expected)


def test_paths_only_print0_lists_only_removable_files(duplicates, dedup_index: Path, tiny_open_clip_dir: Path) -> None:
    folder, made = duplicates
    args = ["dedup", str(folder), "--model", str(tiny_open_clip_dir), "--index", str(dedup_index),
            "--threshold", NO_SIMILAR]
    groups = parse_jsonl(runner.invoke(app, [*args, "--format", "jsonl"]).stdout)
    result = runner.invoke(app, [*args, "--paths-only", "--print0"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.endswith("\0")
    listed = result.stdout[:-1].split("\0")
    assert listed == [d["path"] for g in groups for d in g["duplicates"]]
    assert not {g["keep"] for g in groups} & set(listed)
    assert len(listed) == sum(len(paths) - 1 for paths in made.values())
    assert all(os.path.isfile(p) for p in listed)  # vitkit never deletes
    lines = runner.invoke(app, [*args, "--paths-only"]).stdout.splitlines()
    assert lines == listed
    assert runner.invoke(app, [*args, "--print0"]).exit_code == 2


def test_html_shows_each_group_side_by_side(duplicates, dedup_index: Path, tiny_open_clip_dir: Path,
                                             tmp_path: Path) -> None:
    folder, made = duplicates
    sheet = tmp_path / "groups.html"
    result = runner.invoke(app, ["dedup", str(folder), "--model", str(tiny_open_clip_dir), "--index", str(dedup_index),
                                 "--threshold", NO_SIMILAR, "--html", str(sheet), "--format", "table"])
    assert result.exit_code == 0, result.stderr
    page = sheet.read_text()
    assert page.count('<section class="group">') == len(GOOD_SAMPLES)
    assert page.count("data:image/jpeg;base64,") == sum(len(paths) for paths in made.values())
    assert page.count(">keep<") == len(GOOD_SAMPLES)
    assert "group 1  keep " in result.stdout and "removable files" in result.stdout


def test_library_dedup_equals_cli(duplicates, dedup_index: Path, tiny_open_clip_dir: Path) -> None:
    import vitkit

    folder, _ = duplicates
    from_cli = dedup_cmd(folder, tiny_open_clip_dir, dedup_index, "--threshold", NO_SIMILAR, "--keep", "shortest-path")
    groups = list(vitkit.dedup(str(folder), model=str(tiny_open_clip_dir), index_dir=str(dedup_index),
                               threshold=float(NO_SIMILAR), keep="shortest-path"))
    assert [dict(g) for g in groups] == json.loads(json.dumps(from_cli))
    assert groups[0].duplicates[0].tier == "exact"
    with pytest.raises(vitkit.VitkitError, match="keep rule"):
        list(vitkit.dedup(str(folder), model=str(tiny_open_clip_dir), index_dir=str(dedup_index), keep="biggest"))


def test_folders_restrict_the_groups(duplicates, dedup_index: Path, tiny_open_clip_dir: Path) -> None:
    """The index also holds the originals and variants; dedup of copies/ looks only inside it."""
    folder, _ = duplicates
    assert dedup_cmd(folder / "copies", tiny_open_clip_dir, dedup_index, "--threshold", NO_SIMILAR) == []
    table = runner.invoke(app, ["dedup", str(folder / "copies"), "--model", str(tiny_open_clip_dir),
                                "--index", str(dedup_index), "--threshold", NO_SIMILAR, "--format", "table"])
    assert table.exit_code == 0 and table.stdout == f"no duplicates among {len(GOOD_SAMPLES)} files\n"


@pytest.mark.parametrize("threshold", [NO_SIMILAR, "0.9"])
def test_approximate_neighbours_give_the_exact_groups(threshold: str, duplicates, dedup_index: Path,
                                                       tiny_open_clip_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Above the ANN threshold (forced to 0 here) dedup queries the index's faiss structure, rebuilding a
    missing one with a warning; the groups equal the exact search's, for the whole folder and a subfolder."""
    from vitkit.retrieval import approximate, dedup

    folder, _ = duplicates
    exact = [dedup_cmd(f, tiny_open_clip_dir, dedup_index, "--threshold", threshold) for f in (folder, folder / "variants")]
    used: list[int] = []

    class Counted(dedup.AnnNeighbours):
        def pairs(self, threshold: float, k: int):
            used.append(len(self))
            yield from super().pairs(threshold, k)

    monkeypatch.setattr(dedup, "AnnNeighbours", Counted)
    monkeypatch.setenv(approximate.ANN_MIN_FILES_ENV, "0")
    (dedup_index / "ann.faiss").unlink(missing_ok=True)
    result = runner.invoke(app, ["dedup", str(folder), "--model", str(tiny_open_clip_dir), "--index", str(dedup_index),
                                 "--format", "jsonl", "--threshold", threshold])
    assert result.exit_code == 0, result.stderr
    assert "approximate search index" in result.stderr and "rebuilding" in result.stderr
    assert (dedup_index / "ann.faiss").is_file()  # saved for the next run
    assert parse_jsonl(result.stdout) == exact[0]
    assert dedup_cmd(folder / "variants", tiny_open_clip_dir, dedup_index, "--threshold", threshold) == exact[1]
    items = len(GOOD_SAMPLES) * 5  # the original and its byte copy are one item
    assert used == [items, 4 * len(GOOD_SAMPLES)]  # variants/ holds 4 kinds of copy per photo
    tiers = {d["tier"] for g in exact[0] for d in g["duplicates"]}
    # 0.9 joins distinct photos of the tiny random model by similar links: chains across the near groups.
    assert tiers == ({"exact", "near"} if threshold == NO_SIMILAR else {"exact", "near", "similar"})
