"""Paths that cannot hurt: doctune never writes into the docs it reads, and a save the
system refuses (a full or read-only disk) says what happened and what to do.

An output folder (a run, a token store, cleaned or synthesised data) that is the docs
folder, lies inside it or holds it would put doctune's files among the user's docs, where
the next run reads them back as documentation (``samples.md`` is Markdown), and where a
``--force`` could remove them. These checks refuse that before anything is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from doctune.errors import CheckpointError, ConfigError

if TYPE_CHECKING:
    from doctune.rundir import RunDir


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


def save_failed(error: OSError, *, what: str, folder: Path, needed_bytes: int,
                run: RunDir) -> CheckpointError:
    """The error for a save of ``what`` into ``folder`` that the system refused: what happened,
    the space needed and free, what is still intact, and what to do."""
    import errno
    import shutil

    try:
        free = shutil.disk_usage(_existing(folder)).free
    except OSError:
        free = -1
    space = f"~{needed_bytes / 1e6:,.0f} MB needed, {free / 1e6:,.0f} MB free" if free >= 0 else \
        f"~{needed_bytes / 1e6:,.0f} MB needed"
    ckpts = run.checkpoints()
    intact = (f"The last good checkpoint, {ckpts[-1].path}, is intact." if ckpts
              else "No earlier checkpoint was saved.")
    resume = f"then continue with `doctune train --resume {run.path}`"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        cause = f"the disk is full ({space})"
        fix = f"Free some space, or move the run folder to a disk with room, {resume}."
    elif error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        cause = f"{folder} is not writable ({error.strerror}; {space})"
        fix = f"Make the folder writable (or choose another `train.output_dir`), {resume}."
    else:
        cause = f"{error.strerror or error} ({space})"
        fix = f"Check the disk, {resume}."
    return CheckpointError(f"Could not save {what} in {folder}: {cause}. Its partial files were "
                           f"removed. {intact} {fix}")


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing parent (for disk usage)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: Path) -> int:
    """Free space on the disk that holds ``path`` (or would hold it)."""
    import shutil

    return shutil.disk_usage(_existing(path)).free
