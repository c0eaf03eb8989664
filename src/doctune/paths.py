"""Paths that cannot hurt: doctune never writes into the docs it reads.

An output folder (a run, a token store, cleaned or synthesised data) that is the docs
folder, lies inside it or holds it would put doctune's files among the user's docs, where
the next run reads them back as documentation (``samples.md`` is Markdown), and where a
``--force`` could remove them. These checks refuse that before anything is written.
"""

from __future__ import annotations

from pathlib import Path

from doctune.errors import ConfigError


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def overlap(docs: Path, out: Path) -> str | None:
    """How ``out`` overlaps the docs at ``docs`` ("is", "lies inside", "holds"), or None.

    A single docs file only overlaps an ``out`` that is that file or holds it.
    """
    d, o = docs.expanduser().resolve(), out.expanduser().resolve()
    if d == o:
        return "is"
    if docs.is_dir() and _inside(o, d):
        return "lies inside"
    if _inside(d, o):
        return "holds"
    return None


def check_apart(docs: Path, out: Path, *, what: str, fix: str) -> None:
    """Raise a :class:`ConfigError` when ``out`` (described as ``what``, e.g. "The run folder")
    overlaps the docs at ``docs``; ``fix`` says what to pass instead."""
    how = overlap(docs, out)
    if how is None:
        return
    raise ConfigError(f"{what} {out} {how} the docs folder {docs}: doctune never writes into "
                      "your docs (its files would be read back as documentation, and could "
                      f"replace yours). {fix}")
