"""The register stage's result, as register.json holds it: a `Registration` with the staging gate's
`GateDecision`. `write_registration` and `read_registration` are the only code that writes and reads the
file, and `registration_lines` the only code that words it (`qin register`, the qin-train flow's log and
its summary artifact).

Both records are frozen pydantic dataclasses that check each value's type strictly (a bool is no number, a
number no string), so a file that does not hold one is refused naming the file and the key.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

from pydantic import ConfigDict, ValidationError
from pydantic.dataclasses import dataclass

from qin.runs.io import read_json, write_json

STRICT = ConfigDict(strict=True)


@dataclass(frozen=True, config=STRICT)
class GateDecision:
    """The staging gate's outcome for one version (`qin.registry.promotion.gate`, through `promote`)."""

    alias: str
    has_alias: bool  # the version holds `alias` now: it moved to it, or held it already
    reason: str  # why (the promotion rule's words)
    previous: str | None  # the version that held `alias` when it was decided (None: no holder)
    history_tag: str | None  # the version tag recording the move (`alias_history.<n>`); None: no move

    @property
    def moved(self) -> bool:
        return self.history_tag is not None


@dataclass(frozen=True, config=STRICT)
class Registration:
    """What the register stage did, as register.json holds it: the version the package is and, once `gate`
    ran, the staging decision. The file is flat: these fields and, with a decision, `GateDecision`'s."""

    model_name: str
    run_id: str  # the MLflow run that logged the package (an older one when it was already registered)
    version: str
    newly_registered: bool  # False: the package's content hash was registered before, nothing was logged
    valid_auc: float  # an integer in the file (an AUC of 1) is taken as a float
    model_hash: str  # the package's content hash (`tree_hash`)
    gate: GateDecision | None = None

    def to_json(self) -> dict[str, Any]:
        """The register.json object (one level: the decision's fields beside the registration's)."""
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "gate"}
        return {**own, **(dataclasses.asdict(self.gate) if self.gate is not None else {})}


def write_registration(path: str | Path, registration: Registration) -> Path:
    """Write register.json atomically (a temporary file renamed over `path`)."""
    return write_json(path, registration.to_json())


def read_registration(path: str | Path) -> Registration:
    """register.json back into its record. A file that lacks a field, or holds a value of another type, is
    refused naming the key; the gate's fields are there all or none."""
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object (register.json), found {type(raw).__name__}")
    registration = _record(path, raw, Registration)
    if not any(f.name in raw for f in dataclasses.fields(GateDecision)):
        return registration
    return dataclasses.replace(registration, gate=_record(path, raw, GateDecision))


R = TypeVar("R", Registration, GateDecision)


def _record(path: str | Path, raw: dict[str, Any], record: type[R]) -> R:
    """`record` from the values of its fields (all but `gate`) in register.json's object; pydantic checks
    each one's type. A refusal is a ValueError naming the file, the key, the type expected and the value."""
    types = {k: t for k, t in get_type_hints(record).items() if k != "gate"}
    try:
        return record(**{key: raw[key] for key in types if key in raw})
    except ValidationError as exc:
        errors = exc.errors()
    missing = sorted(str(e["loc"][0]) for e in errors if e["type"] == "missing")
    if missing:
        raise ValueError(
            f"{path}: expected the keys {sorted(types)} of a {record.__name__}, missing {missing}"
        )
    key = str(errors[0]["loc"][0])
    expected = getattr(types[key], "__name__", types[key])
    raise ValueError(f"{path}: key '{key}': expected {expected}, found {errors[0]['input']!r}")


def registration_lines(registration: Registration, run_link: str | None = None) -> list[str]:
    """The register stage's result in three lines of text that are Markdown too: what `qin register`
    prints, the qin-train flow logs and its summary artifact lists. `run_link`: the MLflow run's page,
    linked from the run id."""
    r, g = registration, registration.gate
    how = "newly registered" if r.newly_registered else "already registered, unchanged"
    run = f"[{r.run_id}]({run_link})" if run_link else r.run_id
    if g is None:
        alias = "alias: not offered (the gate has not run)"
    elif g.moved:
        previous = f"from version {g.previous}" if g.previous else "(no previous holder)"
        alias = (
            f"alias '{g.alias}': yes, moved {previous}: {g.reason}; recorded as version tag {g.history_tag}"
        )
    else:
        alias = f"alias '{g.alias}': {'yes' if g.has_alias else 'no'} ({g.reason})"
    return [
        f"{r.model_name} version {r.version} ({how}), valid AUC {r.valid_auc:.5f}",
        f"MLflow run {run}",
        alias,
    ]
