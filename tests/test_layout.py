"""The package's layers: every import inside galaxy_class/ points down, so there is no import circle."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "galaxy_class"


def import_graph():
    """{module: modules of the package it imports}, from the source (imports inside functions included)."""
    graph = {}
    for path in sorted(PACKAGE.glob("*.py")):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "galaxy_class":
                parts = node.module.split(".")
                imported |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
            elif isinstance(node, ast.Import):
                imported |= {a.name.split(".")[1] for a in node.names if a.name.startswith("galaxy_class.")}
        graph[path.stem] = imported & {p.stem for p in PACKAGE.glob("*.py")}
    return graph


def find_cycle(graph):
    """One import circle as [a, b, ..., a], or None."""
    state = {}

    def visit(module, path):
        state[module] = "open"
        for other in sorted(graph[module]):
            if state.get(other) == "open":
                return [*path[path.index(other):], other]
            if other not in state and (cycle := visit(other, [*path, other])):
                return cycle
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module, [module])):
            return cycle
    return None


def test_find_cycle_finds_a_circle_and_only_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_package_has_no_import_circle():
    assert find_cycle(import_graph()) is None


@pytest.mark.parametrize("reader", ["predict", "serve", "distill", "export", "catalogue", "evaluate", "gradcam",
                                    "notebook", "tflite"])
def test_readers_of_a_run_use_the_run_folder_module_not_training(reader):
    graph = import_graph()
    seen, todo = set(), [reader]
    while todo:
        module = todo.pop()
        seen.add(module)
        todo += [m for m in graph[module] if m not in seen]
    assert "train" not in seen, f"{reader} reaches train.py"
