"""How docs are read and cut into windows: a run's ``data:`` settings as one frozen value.

Built once from the configuration (:meth:`DataSettings.from_config`) and passed to
``prepare``, the perplexity evaluation and the CLI, so that the nine settings are unpacked
in one place and their defaults stay in the schema (:class:`doctune.config.DataConfig`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from doctune.config import DataConfig


@dataclass(frozen=True)
class DataSettings:
    """See :class:`doctune.config.DataConfig` for what each setting means."""

    block_size: int
    overlap: int
    val_fraction: float
    seed: int
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    dialect: str
    title_heading: bool

    @classmethod
    def from_config(cls, data: DataConfig, *, exclude: Sequence[str] = ()) -> DataSettings:
        """The settings of ``data``; ``exclude`` adds globs (a run's control documents)."""
        return cls(block_size=data.block_size, overlap=data.overlap,
                   val_fraction=data.val_fraction, seed=data.seed, include=tuple(data.include),
                   exclude=(*data.exclude, *exclude), dialect=data.dialect,
                   title_heading=data.title_heading)

    @classmethod
    def of(cls, **changes: Any) -> DataSettings:
        """The schema's defaults with ``changes`` (checked by the schema): ``of(block_size=128)``."""
        return cls.from_config(DataConfig(**changes))

    def but(self, **changes: Any) -> DataSettings:
        """A copy with ``changes`` (e.g. a block size capped by the model's context)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (lists for the globs), as the token store's manifest records it."""
        d = asdict(self)
        d["include"], d["exclude"] = list(self.include), list(self.exclude)
        return d
