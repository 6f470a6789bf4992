"""The model inputs are declared once, in the feature table (qin/data/features.py, params/features/): no code
outside the data contract (qin/data/) names a model-input column as a string literal, so a column is added,
renamed or dropped by a settings change alone."""

from __future__ import annotations

import ast
from pathlib import Path

from qin.data import features as F

REPO = Path(__file__).resolve().parents[2]


def _input_names() -> set[str]:
    """Every column and name the shipped feature tables declare."""
    names: set[str] = set()
    for path in sorted(F.TABLES.glob("*.yaml")):
        table = F.load(str(path))
        names |= {f.col for f in table.features} | {f.name for f in table.features}
    return names


def _literals(source: str, names: set[str]) -> list[tuple[int, str]]:
    return [
        (node.lineno, node.value)
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names
    ]


def test_no_model_input_column_is_a_string_literal_outside_the_data_contract() -> None:
    names = _input_names()
    assert {"item_seq", "likes_level", "user_id", "txt_emb_BERT"} <= names  # the tables were read
    files = [
        p
        for root in ("qin", "flows")
        for p in sorted((REPO / root).rglob("*.py"))
        if not p.is_relative_to(REPO / "qin" / "data")
    ]
    assert len(files) > 30
    offenders = [
        f"{p.relative_to(REPO)}:{line}: {value!r}"
        for p in files
        for line, value in _literals(p.read_text(), names)
    ]
    assert offenders == []


def test_the_scan_finds_a_literal_column_name() -> None:
    source = 'def f(batch):\n    """item_seq is fine in words."""\n    return batch["item_seq"]\n'
    assert _literals(source, {"item_seq"}) == [(3, "item_seq")]
