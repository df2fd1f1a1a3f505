"""The package's shape: no import circle, and one home for RQ and for statuses."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "flask_plan_regen"


def imports_of(path: Path) -> set[str]:
    """Every module this file imports (module level, in functions, under TYPE_CHECKING)."""
    module = path.stem
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 1:
                base = f"flask_plan_regen.{node.module}" if node.module else "flask_plan_regen"
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)
            elif node.module:
                found.add(node.module)
    found.discard(f"flask_plan_regen.{module}")
    return found


def package_graph() -> dict[str, set[str]]:
    modules = {
        f"flask_plan_regen.{p.stem}": p for p in PACKAGE.glob("*.py") if p.stem != "__init__"
    }
    return {name: imports_of(path) & set(modules) for name, path in modules.items()}


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> list[str] | None:
        if node in visiting:
            return [*visiting[visiting.index(node) :], node]
        if node in done:
            return None
        visiting.append(node)
        for target in sorted(graph[node]):
            circle = visit(target)
            if circle:
                return circle
        visiting.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        circle = visit(node)
        if circle:
            return circle
    return None


def test_find_circle_finds_a_circle() -> None:
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle_in_the_package() -> None:
    assert find_circle(package_graph()) is None


def test_the_state_module_imports_no_feature_module() -> None:
    allowed = {"config", "errors", "hooks", "models", "providers", "ratelimit", "store", "types",
               "documents", "billing", "database"}  # fmt: skip
    imported = {name.rsplit(".", 1)[1] for name in package_graph()["flask_plan_regen.state"]}
    assert imported <= allowed


def test_only_the_queue_and_threaded_worker_modules_import_rq() -> None:
    importers = {
        path.name
        for path in PACKAGE.glob("*.py")
        if any(name == "rq" or name.startswith("rq.") for name in imports_of(path))
    }
    assert importers == {"queue.py", "threaded_worker.py"}


def status_spellings(path: Path) -> list[int]:
    """Lines where a status is written as a bare string (not as a key or a label)."""
    statuses = {"pending", "processing", "succeeded", "failed", "canceled"}
    tree = ast.parse(path.read_text())
    keys = {id(key) for node in ast.walk(tree) if isinstance(node, ast.Dict) for key in node.keys}
    keys |= {id(node.slice) for node in ast.walk(tree) if isinstance(node, ast.Subscript)}
    keys |= {  # labels in formatted text
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.JoinedStr)
        for inner in ast.walk(node)
    }
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value in statuses and id(node) not in keys
    ]


def test_statuses_are_spelled_only_by_their_enum() -> None:
    spelled = {
        path.name: lines for path in PACKAGE.glob("*.py") if (lines := status_spellings(path))
    }
    assert set(spelled) == {"models.py"}, spelled
