"""Bare paths of the images whose records match a filter (`vitkit ask --keep ... --paths-only`), as they come."""

from __future__ import annotations

from vitkit.errors import EXIT_OK, EXIT_SOME_INPUTS_FAILED, UsageError
from vitkit.outputs.writers import open_output
from vitkit.pipeline import Job, iterate


def write_matching_paths(job: Job | None, output: str | None, separator: str, quiet: bool = False) -> int:
    """Paths of records with a true `match`, each followed by `separator`; failed inputs are left out
    (their errors go to stderr) and make the exit status 1."""
    from vitkit.runtime.distributed import is_launched

    if is_launched():
        raise UsageError("--paths-only runs as one process", hint="drop torchrun, or write JSON lines and filter them")
    failed = 0
    with open_output(output) as stream:
        for record in iterate(job, quiet):
            failed += not record.ok
            if record.ok and record.fields.get("match"):
                stream.write(record.path + separator)
                stream.flush()  # a pipeline acts on each image as soon as it is known
    return EXIT_SOME_INPUTS_FAILED if failed else EXIT_OK
