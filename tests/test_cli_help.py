"""Every command and subcommand has help in click's words; VITKIT_DEBUG shows the traceback behind an error."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from conftest import SAMPLE_DATA
from vitkit.cli import app

runner = CliRunner(env={"COLUMNS": "240"})  # help on one line per option, for the checks below


def _command_paths(command, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command of the tree under `command`, as the words that call it (the root included)."""
    paths = [prefix]
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        paths += _command_paths(sub, (*prefix, name))
    return paths


COMMANDS = _command_paths(typer.main.get_command(app))


def test_the_tree_holds_every_command_and_subcommand() -> None:
    names = {" ".join(path) for path in COMMANDS}
    assert {"classify", "label", "detect", "segment", "inpaint", "caption", "index", "search", "bench",
            "models list", "models show", "models pull", "eval detect"} <= names


@pytest.mark.parametrize("words", COMMANDS, ids=lambda words: " ".join(words) or "vitkit")
def test_help_of_every_command(words: tuple[str, ...]) -> None:
    result = runner.invoke(app, [*words, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.stdout
    # Python types are not metavars: a flag shows none, a value an upper-case name.
    assert not re.search(r"<(bool|str|int|float|list\[[a-z]+\])[^>]*>", result.stdout), result.stdout
    if words and words[0] not in ("models", "eval") or len(words) == 2:
        assert "Example: vitkit" in result.stdout


PER_IMAGE = ["classify", "label", "detect", "segment", "caption", "search"]


@pytest.mark.parametrize("command", PER_IMAGE)
def test_per_image_commands_take_html_and_a_device_of_any_name(command: str) -> None:
    text = runner.invoke(app, [command, "--help"]).stdout
    assert "--html" in text and "cuda:N" in text


def test_flag_vocabulary() -> None:
    """-t is a text query (search) and nothing else; -0/--null is NUL-separated input; --print0 output."""
    helps = {" ".join(words): runner.invoke(app, [*words, "--help"]).stdout for words in COMMANDS if words}
    assert re.search(r"--text\s+-t", helps["search"])
    assert not any(re.search(r"\s-t\s", text) for name, text in helps.items() if name != "search")
    assert "--print0" in helps["search"] and "--null" not in helps["search"]
    for name in ("classify", "label", "detect", "segment", "inpaint", "caption"):
        assert re.search(r"--null\s+-0", helps[name]) and "--files-from" in helps[name]


@pytest.mark.parametrize("command,value", [("detect", "1.5"), ("detect", "-0.1"), ("eval", "2"), ("label", "nan"),
                                           ("search", "inf")])
def test_thresholds_are_checked_alike(command: str, value: str, tmp_path: Path) -> None:
    """One check for every --threshold, before any model loads: a number, within 0..1 for a probability."""
    args = {"detect": ["detect", str(SAMPLE_DATA)], "eval": ["eval", "detect", str(SAMPLE_DATA), "--coco-gt", "x.json"],
            "label": ["label", str(SAMPLE_DATA), "--labels", "a,b", "--multi-label"],
            "search": ["search", "--text", "a", "--index", str(tmp_path)]}[command]
    result = runner.invoke(app, [*args, "--model", "no-such-model", "--threshold", value])
    assert result.exit_code == 2, result.output
    assert "threshold" in result.stderr and "no-such-model" not in result.stderr


def _vitkit(*args: str, debug: bool | str) -> subprocess.CompletedProcess:
    env = {name: value for name, value in os.environ.items() if name != "VITKIT_DEBUG"}
    if debug:
        env["VITKIT_DEBUG"] = debug if isinstance(debug, str) else "1"
    return subprocess.run([sys.executable, "-m", "vitkit", *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("args,code", [
    (("classify", str(SAMPLE_DATA), "--model", "no-such-model-xyz"), 3),  # a bad model reference
    (("classify", str(SAMPLE_DATA), "-0"), 2),  # a usage error (-0 without --files-from)
    (("classify", str(SAMPLE_DATA), "--device", "tpu"), 2),  # a device the loader does not know
])
def test_vitkit_debug_shows_the_traceback_behind_the_error(args: tuple[str, ...], code: int) -> None:
    plain = _vitkit(*args, debug=False)
    debug = _vitkit(*args, debug=True)
    assert plain.returncode == debug.returncode == code, (plain.stderr, debug.stderr)
    assert "Traceback" not in plain.stderr and len(plain.stderr.strip().splitlines()) == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == plain.stderr.strip()  # the same line, last


def test_device_takes_cuda_n_and_the_loader_says_what_the_machine_has(tiny_timm_dir: Path) -> None:
    import torch

    missing = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU, or any GPU on a CPU-only machine
    result = runner.invoke(app, ["classify", str(SAMPLE_DATA / "chelsea.jpg"), "--model", str(tiny_timm_dir),
                                 "--device", missing])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("vitkit: error: --device cuda") and len(result.stderr.splitlines()) == 1
    assert "Invalid value" not in result.stderr  # not refused by the option parser


def test_vitkit_debug_0_means_off() -> None:
    off = _vitkit("classify", str(SAMPLE_DATA), "-0", debug="0")
    assert off.returncode == 2 and "Traceback" not in off.stderr
