"""Project hygiene: CI runs the README's test command, and the sample data is what the README says."""

from __future__ import annotations

import re

from tests.conftest import BROKEN_SAMPLES, GOOD_SAMPLES, REPO_ROOT


def test_ci_runs_the_readme_test_command() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    commands = re.findall(r"```bash\n(.+?)\n```", readme)
    test_command = next(c for c in commands[:2] if "pytest" in c)
    assert test_command in (REPO_ROOT / ".ci" / "run").read_text().splitlines()
    assert "vitkit classify sample_data/" in commands[0]


def test_sample_data_has_photos_licences_and_broken_files() -> None:
    licences = (REPO_ROOT / "sample_data" / "LICENSES.md").read_text()
    assert len(GOOD_SAMPLES) == 6 and all(name in licences for name in GOOD_SAMPLES)
    assert BROKEN_SAMPLES == ["empty.jpg", "not_an_image.jpg", "truncated.jpg"]
