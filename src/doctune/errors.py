"""The exceptions doctune raises on purpose.

Every error a user can cause derives from :class:`DoctuneError`; its message says what
was wrong, where, and how to fix it. The CLI prints these without a traceback and
exits with the error's ``exit_code`` (2 unless it says otherwise).
"""

from __future__ import annotations


class DoctuneError(Exception):
    """Base class of doctune's user-facing errors.

    ``exit_code`` is the CLI's exit status for it: 2 (the default) for input that cannot be
    used, 1 where the input was fine but nothing came of it (no file could be cleaned).
    """

    def __init__(self, message: str, *, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.every_rank = False
        """True when every process of a ``torchrun`` launch raised it together (rank 0's
        error, shared): rank 0 alone prints it."""


class ConfigError(DoctuneError):
    """The configuration (YAML file, ``--set`` override or CLI option) is invalid."""


class DataError(DoctuneError):
    """The documentation folder or the prepared data cannot be used."""


class ModelError(DoctuneError):
    """A model or tokenizer cannot be found or loaded."""


class CheckpointError(DoctuneError):
    """A run folder or checkpoint is missing, incomplete or inconsistent."""


class TrainingError(DoctuneError):
    """Training stopped because it cannot go on (for example a NaN loss)."""


class ExportError(DoctuneError):
    """Merging or exporting a model failed."""
