"""qin/ is a plain library: it imports no Prefect, MLflow or DVC (directly or through its modules), nor the
flows or the stack; the flows import no stack module (the stack builds on the flows, never the reverse)."""

import ast
import subprocess
import sys
from pathlib import Path

QIN = Path(__file__).resolve().parents[2] / "qin"
FORBIDDEN = ("prefect", "mlflow", "dvc", "flows", "qinstack")


def test_no_forbidden_import_statements_in_qin() -> None:
    offenders = []
    for f in QIN.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{f.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert offenders == []


def test_importing_every_qin_module_loads_none_of_them() -> None:
    modules = sorted(
        ".".join(p.relative_to(QIN.parent).with_suffix("").parts)
        for p in QIN.rglob("*.py")
        if p.name != "__main__.py"
    )
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"print(sorted({{k.split('.')[0] for k in sys.modules}} & set({FORBIDDEN!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert len(modules) >= 10  # the check covered the library, not an empty list


def test_the_flows_import_nothing_from_the_stack() -> None:
    flows = QIN.parent / "flows"
    offenders = []
    for f in flows.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            else:
                continue
            offenders += [f"{f.name}: {n}" for n in names if n.split(".")[0] == "qinstack"]
    assert offenders == []
