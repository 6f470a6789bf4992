"""The README's layout map names every Python package of the repository and nothing that is not there.

The map is the first fenced block under the README's "## Layout" heading, one line per folder: its path, then
what it holds. The packages are the folders holding an __init__.py under qin/, flows/ and qinstack/.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_ROOTS = ("qin", "flows", "qinstack")
# A module or a folder named in a line's description: a.py, or name/ standing on its own (not DCNv3/SDCNv3).
NAMED = re.compile(r"(?<![\w/.-])([\w.-]+\.py|[\w.-]+/)(?=[\s,;)]|$)")


def layout_map(readme: str) -> dict[str, str]:
    """{path: description} of the map under '## Layout'; a line that does not start with a path fails."""
    section = readme.split("\n## Layout\n", 1)
    assert len(section) == 2, "README.md: no '## Layout' section"
    block = re.search(r"^```\n(.*?)^```$", section[1], re.S | re.M)
    assert block, "README.md: no fenced block under '## Layout'"
    rows = {}
    for line in block.group(1).splitlines():
        path, _, what = line.partition(" ")
        expected = "README.md layout map: expected a line 'folder/  what it holds'"
        assert path.endswith("/") and what.strip(), f"{expected}, found {line!r}"
        rows[path] = what.strip()
    return rows


def packages() -> set[str]:
    """Every folder holding an __init__.py under the package roots, as 'qin/runs/'."""
    found = set()
    for top in PACKAGE_ROOTS:
        for init in (ROOT / top).rglob("__init__.py"):
            found.add(f"{init.parent.relative_to(ROOT).as_posix()}/")
    return found


def test_the_map_names_every_package() -> None:
    found = packages()
    assert {"qin/", "qin/runs/", "flows/", "qinstack/"} <= found  # the walk found the packages
    assert sorted(found - set(layout_map((ROOT / "README.md").read_text()))) == []


def test_every_path_the_map_names_exists() -> None:
    rows = layout_map((ROOT / "README.md").read_text())
    missing = [path for path in rows if not (ROOT / path).is_dir()]
    missing += [
        f"{path}{name} (named on the line of {path})"
        for path, what in rows.items()
        for name in NAMED.findall(what)
        if not (ROOT / path / name).exists()
    ]
    assert missing == []


def test_the_map_is_read_line_by_line() -> None:
    lines = ("qin/   stages a.py b.py; cli.py", "qin/models/  DCNv3/SDCNv3 files")
    readme = "# x\n\n## Layout\n\n```\n" + "\n".join(lines) + "\n```\n"
    rows = layout_map(readme)
    assert rows == {"qin/": "stages a.py b.py; cli.py", "qin/models/": "DCNv3/SDCNv3 files"}
    assert NAMED.findall(rows["qin/"]) == ["a.py", "b.py", "cli.py"]
    assert NAMED.findall(rows["qin/models/"]) == []
    assert NAMED.findall("tests by kind: code/, data/; integration/") == ["code/", "data/", "integration/"]
