"""The folders the studio may read and write, and the checks on every typed path.

The studio answers only for paths inside its roots (the folder it was started in, unless
``--root`` says otherwise), and applies the CLI's own rule on top: an output folder (a run,
an export) never is, lies inside or holds the docs folder (:func:`doctune.paths.check_apart`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from doctune.errors import ConfigError, DoctuneError


class PathRefused(DoctuneError):
    """A typed path lies outside the studio's roots, or would write among the docs."""


@dataclass(frozen=True)
class Workspace:
    """Where the studio works: ``roots`` it may touch, ``cwd`` relative paths start from,
    ``runs`` the folder whose run folders it lists."""

    roots: tuple[Path, ...]
    cwd: Path
    runs: Path

    @classmethod
    def create(cls, roots: list[Path] | None, runs: Path | None, cwd: Path | None = None) -> Workspace:
        """Resolve the roots (default: ``cwd``) and the runs folder (default: ``runs/``)."""
        here = (cwd or Path.cwd()).resolve()
        resolved = tuple((here / r).expanduser().resolve() for r in (roots or [here]))
        ws = cls(resolved, here, here)
        return cls(resolved, here, ws.inside(str(runs or "runs"), what="The runs folder"))

    def resolve(self, typed: str) -> Path:
        """``typed`` as an absolute path (``~`` expanded, relative to ``cwd``), links resolved."""
        if not typed or not typed.strip():
            raise PathRefused("Type a path first.")
        return (self.cwd / Path(typed.strip()).expanduser()).resolve()

    def inside(self, typed: str, *, what: str) -> Path:
        """``typed`` resolved, or :class:`PathRefused` when it lies outside every root."""
        path = self.resolve(typed)
        if not any(path == r or r in path.parents for r in self.roots):
            roots = ", ".join(str(r) for r in self.roots)
            raise PathRefused(f"{what} {path} is outside the folders this studio may use "
                              f"({roots}). Pick a folder inside them, or restart the studio "
                              "with `--root FOLDER`.")
        return path

    def shown(self, path: Path) -> str:
        """``path`` as a command line shows it: relative to ``cwd`` when inside it."""
        return str(path.relative_to(self.cwd)) if self.cwd in path.parents else str(path)

    def docs(self, typed: str) -> Path:
        """A docs folder (or file) to read: inside the roots, and existing."""
        path = self.inside(typed, what="The docs folder")
        if not path.exists():
            raise PathRefused(f"The docs folder {path} does not exist.")
        return path

    def output(self, typed: str, *, docs: Path | None, what: str) -> Path:
        """A folder to write (a run, an export): inside the roots and apart from ``docs``,
        refused as ``doctune train`` refuses it."""
        path = self.inside(typed, what=what)
        if docs is not None:
            try:
                from doctune.paths import check_apart

                check_apart(docs, path, what=what, fix="Choose a folder outside it, e.g. runs/mydocs.")
            except ConfigError as e:
                raise PathRefused(str(e)) from None
        return path

    def run_folders(self) -> list[Path]:
        """Run folders under ``runs`` (one level down), newest first."""
        from doctune.rundir import RunDir

        if not self.runs.is_dir():
            return []
        found = [p for p in self.runs.iterdir() if p.is_dir() and RunDir.is_run(p)]
        return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)
