"""The exceptions doctune raises on purpose.

Every error a user can cause derives from :class:`DoctuneError`; its message says what
was wrong, where, and how to fix it. The CLI prints these without a traceback and
exits with status 2 (1 is left for unexpected crashes).
"""

from __future__ import annotations


class DoctuneError(Exception):
    """Base class of doctune's user-facing errors."""


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
