"""The package's layers point down: no import cycle among alarm's modules, and no module imports one of a higher
layer. Every import counts, a function-level one too (one hid a cycle before); ``if TYPE_CHECKING:`` imports do
not (they never run). docs/architecture.md shows the same layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Lowest first. A module belongs to the layer of its longest listed prefix ("alarm" itself: the package only).
LAYERS = (
    ("foundation", ("alarm", "alarm.errors", "alarm.io", "alarm.text", "alarm.progress", "alarm.outputs",
                    "alarm.trainers.configs", "alarm.evaluation.statistics", "alarm.evaluation.plots")),
    ("models, data and rewards", ("alarm.data", "alarm.rewards", "alarm.reward_models", "alarm.checkpoints",
                                  "alarm.models", "alarm.placement", "alarm.combine", "alarm.generation",
                                  "alarm.trainers.runtime", "alarm.trainers.sequences")),
    ("trainers, selection and evaluation", ("alarm.trainers", "alarm.selection", "alarm.evaluation")),
    ("recipe settings", ("alarm.config",)),
    ("commands and integrations", ("alarm.recipes", "alarm.integrations")),
    ("the command line", ("alarm.cli",)),
)


def layer_of(module: str) -> int:
    best = (-1, -1)  # (prefix length, layer)
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if module == p or (p != "alarm" and module.startswith(p + ".")):
                best = max(best, (len(p), i))
    assert best[1] >= 0, f"{module} is in no layer: add it to LAYERS (and docs/architecture.md)"
    return best[1]


def modules(src: Path = SRC) -> dict[str, Path]:
    out = {}
    for f in sorted((src / "alarm").rglob("*.py")):
        parts = f.relative_to(src).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:``."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skip


def imports(src: Path = SRC) -> dict[str, set[str]]:
    """Each alarm module → the alarm modules it imports (``from alarm.x import y`` counts as alarm.x.y when y
    is a module, else as alarm.x)."""
    mods = modules(src)
    graph = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        skip = _type_checking_only(tree)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, *([node.module] if node.module else [])])
                deps |= {f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names}
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def upward(graph: dict[str, set[str]]) -> list[str]:
    return [f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
            for a in sorted(graph) for b in sorted(graph[a]) if layer_of(b) > layer_of(a)]


def test_no_import_cycle_among_alarm_modules():
    assert cycles(imports()) == []


def test_no_module_imports_from_a_higher_layer():
    assert upward(imports()) == []


def test_every_module_has_a_layer():
    for name in modules():
        layer_of(name)


def test_the_checks_see_an_added_cycle_and_an_added_upward_import(tmp_path):
    """The checks on a copy of the package with one function-level import added to each of two modules."""
    import shutil

    shutil.copytree(SRC / "alarm", tmp_path / "alarm")
    clean = imports(tmp_path)
    assert cycles(clean) == [] and upward(clean) == []
    errors = tmp_path / "alarm" / "errors.py"  # alarm.io imports it: a cycle
    errors.write_text(errors.read_text() + "\n\ndef _late():\n    import alarm.io\n")
    plots = tmp_path / "alarm" / "evaluation" / "plots.py"  # foundation
    plots.write_text(plots.read_text() + "\n\ndef _later():\n    from alarm.config import read_settings\n")
    graph = imports(tmp_path)
    assert len(cycles(graph)) == 1 and {"alarm.errors", "alarm.io"} <= set(cycles(graph)[0])
    assert upward(graph) == ["alarm.evaluation.plots (foundation) imports alarm.config (recipe settings)"]
