"""Typed errors. Library code raises these; only the CLI edge turns them into messages and exit codes."""

from __future__ import annotations

EXIT_OK = 0
EXIT_SOME_INPUTS_FAILED = 1
EXIT_USAGE = 2
EXIT_MODEL = 3


class VitkitError(Exception):
    """Base error: a message for the user and an optional hint on what to do next."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


class UsageError(VitkitError):
    """Bad options, bad configuration, or nothing to do."""


class UnknownModelError(VitkitError):
    """The model reference matches nothing we know how to load."""

    exit_code = EXIT_MODEL


class ModelTaskMismatchError(VitkitError):
    """The model exists but cannot do what the command asks."""


class ModelLoadError(VitkitError):
    """The model was found but could not be loaded (corrupt, unsafe or incompatible files)."""

    exit_code = EXIT_MODEL


class ModelNotCachedError(ModelLoadError):
    """Weights are not in the local cache and cannot be downloaded."""


class InputError(VitkitError):
    """One input file could not be used; the run carries on with the others."""

    def __init__(self, message: str, kind: str = "failed", hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.kind = kind  # a short category for the end-of-run summary ("truncated", "empty", ...)


class OutputError(VitkitError):
    """Results could not be written where asked."""


class IndexError_(VitkitError):
    """The on-disk index cannot be used as asked (base class; the trailing _ avoids the builtin)."""


class IndexLockedError(IndexError_):
    """Another process is writing the index."""


class IndexModelMismatchError(IndexError_):
    """The index was built with another model; mixing vector spaces would give meaningless scores."""


class IndexSchemaError(IndexError_):
    """The index was written by a newer vitkit (or is not a vitkit index)."""
