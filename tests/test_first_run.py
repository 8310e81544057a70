"""A new user's first run: the README's commands, parsed from README.md and run as written (a tiny model
substituted with --model), succeed on sample_data/ and fail cleanly on sample_errors/."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import shlex
import struct
import subprocess
import sys
import termios
from pathlib import Path

from tests.conftest import BROKEN_SAMPLES, GOOD_SAMPLES, REPO_ROOT, parse_jsonl

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def readme_code_blocks() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", (REPO_ROOT / "README.md").read_text(), flags=re.S)


def vitkit_arguments(command_line: str) -> list[str]:
    """The arguments after `vitkit` in the last `&&`-joined part of a README command that runs it."""
    last = command_line.split("&&")[-1]
    words = shlex.split(last)
    at = next(i for i, word in enumerate(words) if word == "vitkit" or word.endswith("/vitkit"))
    return words[at + 1:]


def first_command() -> list[str]:
    return vitkit_arguments(readme_code_blocks()[0])


def error_example() -> list[str]:
    [block] = [b for b in readme_code_blocks() if "sample_errors/" in b and "vitkit classify" in b]
    return vitkit_arguments(block)


def run_in_repo(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vitkit", *args], cwd=REPO_ROOT, env=os.environ.copy(),
                          timeout=300, **kwargs)


def test_the_readme_first_command_is_what_this_file_runs() -> None:
    assert first_command() == ["classify", "sample_data/"]
    assert error_example()[0] == "classify" and "sample_errors/" in error_example()


def test_first_command_exits_0_with_one_record_per_photo(tiny_timm_dir: Path) -> None:
    proc = run_in_repo([*first_command(), "--model", str(tiny_timm_dir)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    records = parse_jsonl(proc.stdout)  # a pipe: JSON lines
    assert [r["path"] for r in records] == [f"sample_data/{name}" for name in GOOD_SAMPLES]
    assert all(set(r) == {"path", "width", "height", "predictions"} and r["predictions"] for r in records)
    assert "error" not in proc.stderr


def test_error_example_exits_1_with_one_error_line_per_broken_file(tiny_timm_dir: Path) -> None:
    proc = run_in_repo([*error_example(), "--model", str(tiny_timm_dir)], capture_output=True, text=True)
    assert proc.returncode == 1
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    named = sorted(line.split(": ")[1] for line in error_lines)
    assert named == [f"sample_errors/{name}" for name in BROKEN_SAMPLES]  # exactly one line per broken file
    records = parse_jsonl(proc.stdout)
    assert sorted(r["path"] for r in records if "error" in r) == named
    assert [r["path"] for r in records if "error" not in r] == [a for a in error_example() if a.endswith(".jpg")]
    assert "Traceback" not in proc.stderr


def run_on_terminal(args: list[str], columns: int) -> tuple[int, str]:
    """stdout on a real pseudo-terminal `columns` wide, as a user's shell gives it."""
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 30, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen([sys.executable, "-m", "vitkit", *args], cwd=REPO_ROOT, env=env, stdout=child,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    os.close(child)
    chunks = []
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    code = proc.wait(timeout=300)
    proc.stderr.close()
    os.close(main)
    return code, _ANSI.sub("", b"".join(chunks).decode("utf-8").replace("\r\n", "\n"))


def test_first_command_on_an_80_column_terminal_is_a_readable_table(tiny_timm_dir: Path) -> None:
    code, screen = run_on_terminal([*first_command(), "--model", str(tiny_timm_dir)], columns=80)
    assert code == 0
    lines = screen.rstrip("\n").splitlines()
    assert lines[0].split() == ["path", "result"]
    assert max(len(line) for line in lines) <= 80
    for name in GOOD_SAMPLES:  # each path whole on one line, beside its top label and score
        [row] = [line for line in lines if f"sample_data/{name}" in line]
        assert re.search(r"sample_data/\S+\s+[01]\.\d\d  \S", row), row
    scored = [line for line in lines if re.search(r"\s[01]\.\d\d  \S", line)]
    assert len(scored) == 5 * len(GOOD_SAMPLES)  # the default top 5, one line each
    assert "{" not in screen
