"""No function in the library, the flows or the stack is over MAX_LINES long, counted from its `def` line to
its last line, docstring included (decorators not counted)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("qin", "flows", "qinstack")
MAX_LINES = 50


def lengths() -> list[tuple[int, str]]:
    found = []
    for package in PACKAGES:
        for f in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(f.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    assert node.end_lineno is not None
                    where = f"{f.relative_to(ROOT)}:{node.lineno} {node.name}"
                    found.append((node.end_lineno - node.lineno + 1, where))
    return sorted(found, reverse=True)


def test_no_function_is_over_max_lines() -> None:
    found = lengths()
    assert len(found) > 500  # every package was read
    assert [f"{where}: {n} lines" for n, where in found if n > MAX_LINES] == []


def test_the_count_runs_from_def_to_the_last_line() -> None:
    tree = ast.parse('@decorator\ndef f(\n    a,\n):\n    """Doc."""\n\n    return a\n')
    (node,) = tree.body
    assert isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno + 1 == 6  # type: ignore[operator]
