"""Issue 17 item 21: the app's modules import each other without a cycle (ood.py and ui.py used to: WORK_MAX_SIDE
one way, OODCheck the other), so each can be read, imported and tested on its own."""

import ast
from pathlib import Path

SPACE = Path(__file__).resolve().parents[1] / "space"


def _imports(path: Path) -> set:
    """The space modules that ``path`` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("space."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("space."))
    return found


def test_space_modules_import_each_other_without_a_cycle():
    graph = {p.stem: _imports(p) & {q.stem for q in SPACE.glob("*.py")} for p in SPACE.glob("*.py")}
    graph.pop("__init__", None)

    def cycle_from(start, node, path):
        for nxt in graph.get(node, ()):
            if nxt == start:
                return path + [nxt]
            if nxt not in path:
                found = cycle_from(start, nxt, path + [nxt])
                if found:
                    return found
        return None

    cycles = [c for m in sorted(graph) for c in [cycle_from(m, m, [m])] if c]
    assert not cycles, cycles


def test_the_limits_are_one_module_that_both_read():
    from space import limits, ui

    assert ui.WORK_MAX_SIDE is limits.WORK_MAX_SIDE and ui.MAX_STEPS == limits.MAX_STEPS
    assert "limits" in _imports(SPACE / "ood.py") and "ui" not in _imports(SPACE / "ood.py")
