"""Records the top-level modules the project's own files import, for bench/gpu_check.py --check-imports.

On PYTHONPATH (the check puts this folder there) Python imports this file at start-up in every process,
and QIN_IMPORT_LOG names the file that collects one line per module and importing file. Only imports made
by a file of the project (qin/, flows/, bench/, tests/) count, of modules outside the standard library and
the project: what a package imports for itself is that package's business on any image.
"""

import builtins
import os
import sys
from pathlib import Path

_LOG = os.environ.get("QIN_IMPORT_LOG")
_ROOT = str(Path(__file__).resolve().parents[2]) + os.sep
_OWN = {"qin", "flows", "bench", "tests", "throughput", "common", "gpu_check", "sitecustomize", "conftest"}

if _LOG:
    _seen: set[tuple[str, str]] = set()
    _import = builtins.__import__

    def _recording_import(name, globals=None, locals=None, fromlist=(), level=0):
        module = _import(name, globals, locals, fromlist, level)
        if level == 0 and globals:
            where = globals.get("__file__") or ""
            top = name.split(".", 1)[0]
            if where.startswith(_ROOT) and top not in sys.stdlib_module_names and top not in _OWN:
                key = (top, where[len(_ROOT) :])
                if key not in _seen and not where[len(_ROOT) :].startswith((".venv", "bench/import_log")):
                    _seen.add(key)
                    with open(_LOG, "a") as f:
                        f.write(f"{top} {key[1]}\n")
        return module

    builtins.__import__ = _recording_import
