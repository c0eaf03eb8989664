"""The house rules of ``src/doctune`` (docs/architecture.md), checked on the source itself:
each module imports only from its own floor or the floors below, no import cycle (lazy
imports inside functions count; ``if TYPE_CHECKING:`` blocks do not), and functions stay
short enough to read in one screen."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).parent.parent / "src" / "doctune"

# The floors, lowest first: a module may import from its floor and those below it. The
# first part of a module's name below ``doctune`` decides its floor (a package's modules
# all stand on the package's floor).
FLOORS: list[tuple[str, ...]] = [
    ("errors", "atomic"),
    ("config", "device", "sources", "sampling", "catalog"),
    ("data", "modeling", "rundir", "machine", "shape", "quantize"),
    ("plan", "plan_machines", "inference", "paths"),
    ("knowledge", "generate"),
    ("export", "monitor"),
    ("train",),
    ("perplexity",),
    ("cli", "studio", "__main__"),
]
LONGEST_FUNCTION = 80
LONGEST_LOOP = 120
"""``train_loop``, the one loop, reads top to bottom in commented sections."""


def _modules() -> dict[str, Path]:
    mods = {}
    for path in SRC.rglob("*.py"):
        name = ".".join(("doctune", *path.relative_to(SRC).with_suffix("").parts))
        mods[name.removesuffix(".__init__")] = path
    return mods


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """The doctune modules ``path`` imports, at the top or inside functions."""
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                for child in node.orelse:
                    self.visit(child)
                return
            self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            found.update(a.name for a in node.names if a.name.startswith("doctune"))

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.module and node.module.startswith("doctune"):
                for a in node.names:  # `from doctune.train import dist` imports a module
                    sub = f"{node.module}.{a.name}"
                    found.add(sub if sub in MODULES else node.module)

    Visitor().visit(ast.parse(path.read_text(encoding="utf-8")))
    return {m for m in found if m in MODULES}


GRAPH = {name: _imports(path) - {name} for name, path in MODULES.items()}


def floor_of(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return 0  # the package itself
    for i, names in enumerate(FLOORS, start=1):
        if parts[1] in names:
            return i
    raise AssertionError(f"{module} stands on no floor: add it to FLOORS here and to "
                         "docs/architecture.md")


def test_every_module_stands_on_a_floor() -> None:
    for module in MODULES:
        floor_of(module)


def test_imports_go_down_or_stay_on_the_floor() -> None:
    upward = [f"{m} (floor {floor_of(m)}) imports {d} (floor {floor_of(d)})"
              for m, deps in sorted(GRAPH.items()) for d in sorted(deps)
              if floor_of(d) > floor_of(m)]
    assert upward == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle() -> None:
    assert _cycles(GRAPH) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_the_data_floor_and_the_config_import_no_torch() -> None:
    """``doctune prepare``/``clean`` and the config run without loading PyTorch."""
    heavy = {"torch", "transformers", "peft"}
    for name, path in MODULES.items():
        if name.startswith(("doctune.data", "doctune.config", "doctune.atomic")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            top = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
            top |= {(n.module or "").split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom)}
            assert not top & heavy, name


def test_functions_read_in_one_screen() -> None:
    long = []
    for name, path in sorted(MODULES.items()):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                limit = LONGEST_LOOP if node.name == "train_loop" else LONGEST_FUNCTION
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > limit:
                    long.append(f"{name}.{node.name}: {lines} lines (at most {limit})")
    assert long == []


def test_the_studio_never_reaches_into_training() -> None:
    """The studio runs `doctune train` as a process of its own and reads the run folder: a
    slow page never slows a run, and there is no second path into the loop."""
    reaching = sorted(f"{m} imports {d}" for m, deps in GRAPH.items() if m.startswith("doctune.studio")
                      for d in deps if d.startswith("doctune.train"))
    assert reaching == []
