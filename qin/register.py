"""The `register` stage and `qin promote`: record a trained package in a model registry and move aliases.

The library defines what a registry must do (`Registry`) and the promotion rules; the MLflow implementation
lives in flows/tracking.py and is found through the `qin.registries` entry point named in params
(`register.registry`), so this library never imports MLflow.

Idempotent: a package whose content hash is already registered is not logged again; its existing run
and version are reported instead. Under concurrency (see `register`): one version per content hash.
A version is created with its tags (`Candidate.version_tags`) in one call, after its model files, so a
version the registry lists is always one `find` recognises.

Promotion (`promote`, one code path for the register stage's automatic gate and for `qin promote`):
- `staging` (params `register.alias`): the register stage offers every new version; `qin promote --to
  staging` offers one by hand.
- `production` (params `register.production_alias`, `champion`): only `qin promote --to production`.
A version takes an alias when no version holds it, or when its valid AUC beats the holder's by at least
`register.min_delta`: the two `valid_auc` tags on the same data version (`data_hash` tag); on a new data
version, both models re-scored on the candidate's valid split (a `Judge`, `judge_on`, qin/registry/judge.py).
A
version whose run or model artifacts are missing is always refused. Every move is recorded on the version as
a tag `alias_history.<n>` (JSON: when, alias, from which version, metrics, what was compared on new data,
reason, by whom), read back with `alias_history`. A move is a compare-and-set against the holder the
decision was made on (see `promote`).

The stage's result is a `Registration` (with the gate's `GateDecision`): `write_registration` and
`read_registration` are the only code that writes and reads register.json, and `registration_lines` the only
code that words it (`qin register`, the qin-train flow's log and its summary artifact).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Literal, Protocol, get_type_hints

import qin
from qin.registry.judge import Comparison, digest
from qin.runs import layout
from qin.runs.io import file_lock, read_json, tree_hash, write_json
from qin.runs.store import lineage
from qin.settings.params import Params, to_yaml
from qin.settings.sections import RegisterConfig, flatten, section_hash
from qin.validate import DATA_DOCS, REPORT, SUMMARY


@dataclass(frozen=True)
class Candidate:
    model_dir: Path
    model_hash: str
    metrics: dict[str, float]  # final metrics (evaluate)
    history: list[dict[str, float]]  # per-epoch metrics (train)
    params: dict[str, Any]  # the full resolved config, flattened
    tags: dict[str, str]  # provenance: data, params and code hashes, git commit
    # Reports and metrics to attach: (a file or folder, the run's artifact folder to put it in).
    artifacts: list[tuple[Path, str]] = field(default_factory=list)
    config_yaml: str = ""  # the full resolved settings, as `qin params` prints them
    extra_tags: dict[str, str] = field(default_factory=dict)  # more version tags (e.g. the stage keys)

    def version_tags(self) -> dict[str, str]:
        """Every tag the version is created with: what `find` and the promotion rules read, the provenance,
        and `extra_tags` (which may not replace any of the others)."""
        own = {
            "model_hash": self.model_hash,
            "valid_auc": str(self.metrics["valid_auc"]),
            **{key: self.tags[key] for key in ("data_hash", "params_hash", "git_commit", "code_hash")},
        }
        clash = sorted(k for k in self.extra_tags if k in own or k.startswith(f"{HISTORY_TAG}."))
        if clash:
            raise ValueError(
                f"Candidate.extra_tags: expected keys other than {sorted(own)} and '{HISTORY_TAG}.<n>', "
                f"found {clash}"
            )
        return {**self.extra_tags, **own}


HISTORY_TAG = "alias_history"
STAGE_KEYS_TAG = (
    "stage_keys"  # JSON {stage: key}: the stage outputs (qin/runs/store.py) the version came from
)
# How often `promote` re-decides when the alias moved under it before it gives up.
ALIAS_TRIES = 10
Target = Literal["staging", "production"]


@dataclass(frozen=True)
class VersionInfo:
    """One registered version as the promotion rules see it: its run and its tags."""

    version: str
    run_id: str
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def valid_auc(self) -> float | None:
        auc = self.tags.get("valid_auc")
        return float(auc) if auc is not None else None

    @property
    def data_hash(self) -> str | None:
        return self.tags.get("data_hash")


class PromotionRefused(RuntimeError):
    """A version may not take the alias it was offered; the message says why."""


class RegistryError(RuntimeError):
    """The registry could not be read or written; the message names what was asked and the store's error.
    A promotion that meets one changes nothing."""


class AliasContended(RuntimeError):
    """The alias kept moving between `promote`'s read and its compare-and-set; nothing was decided."""


@dataclass(frozen=True)
class Registered:
    run_id: str
    version: str


class Registry(Protocol):
    def find(self, model_name: str, model_hash: str) -> Registered | None:
        """The lowest-numbered version whose `model_hash` tag is this content hash, if any."""

    def log_and_register(self, model_name: str, candidate: Candidate) -> Registered:
        """Log one run (params, metrics, artifacts, the model), then create a new version of its model in
        one call carrying `candidate.version_tags()`."""

    def delete_version(self, model_name: str, version: str) -> None:
        """Delete the version and its run (a duplicate that lost a registration race)."""

    def get_version(self, model_name: str, version: str) -> VersionInfo | None:
        """The version with its tags, or None when the model or version does not exist."""

    def versions(self, model_name: str) -> list[VersionInfo]:
        """Every version of the model with its tags ([] when it has none)."""

    def alias_holder(self, model_name: str, alias: str) -> VersionInfo | None:
        """The version holding `alias`, or None."""

    def set_alias_if(self, model_name: str, alias: str, version: str, expected: str | None) -> bool:
        """Re-read who holds `alias`; give it to `version` only if the holder is still `expected` (None: no
        holder). Returns whether it was set."""

    def set_version_tag(self, model_name: str, version: str, key: str, value: str) -> None: ...

    def missing_artifacts(self, model_name: str, version: str) -> str | None:
        """Why its run or model artifacts cannot be used (run deleted, model files gone), or None."""

    def download_package(self, model_name: str, version: str, dest: Path) -> None:
        """Copy the version's model package (the files `qin.serving.inference.load_package` reads) into
        `dest`,
        an empty folder."""

    def log_scoring(self, model_name: str, version: str, manifest: Path, name: str) -> None:
        """Attach a scoring manifest (qin/predict.py) to the version's run, as `predictions/<name>.json`."""


# ---------------------------------------------------------------- the register stage's result: register.json


@dataclass(frozen=True)
class GateDecision:
    """The staging gate's outcome for one version (`gate`, through `promote`)."""

    alias: str
    has_alias: bool  # the version holds `alias` now: it moved to it, or held it already
    reason: str  # why (the promotion rule's words)
    previous: str | None  # the version that held `alias` when it was decided (None: no holder)
    history_tag: str | None  # the version tag recording the move (`alias_history.<n>`); None: no move

    @property
    def moved(self) -> bool:
        return self.history_tag is not None


@dataclass(frozen=True)
class Registration:
    """What the register stage did, as register.json holds it: the version the package is and, once `gate`
    ran, the staging decision. The file is flat: these fields and, with a decision, `GateDecision`'s."""

    model_name: str
    run_id: str  # the MLflow run that logged the package (an older one when it was already registered)
    version: str
    newly_registered: bool  # False: the package's content hash was registered before, nothing was logged
    valid_auc: float
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
    decided = any(f.name in raw for f in dataclasses.fields(GateDecision))
    return Registration(
        **_checked_fields(path, raw, Registration),
        gate=GateDecision(**_checked_fields(path, raw, GateDecision)) if decided else None,
    )


def _checked_fields(path: str | Path, raw: dict[str, Any], record: type) -> dict[str, Any]:
    """The values of `record`'s fields (all but `gate`) in register.json's object, each of its type."""
    types = {k: t for k, t in get_type_hints(record).items() if k != "gate"}
    missing = sorted(set(types) - set(raw))
    if missing:
        raise ValueError(
            f"{path}: expected the keys {sorted(types)} of a {record.__name__}, missing {missing}"
        )
    values = {}
    for key, t in types.items():
        value = raw[key]
        # A float may be written as an int (an AUC of 1); a bool is an int to isinstance, but no number.
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not (number if t is float else isinstance(value, t)):
            raise ValueError(f"{path}: key '{key}': expected {getattr(t, '__name__', t)}, found {value!r}")
        values[key] = float(value) if t is float else value
    return values


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


def load_registry(cfg: RegisterConfig) -> Registry:
    found = {ep.name: ep for ep in entry_points(group="qin.registries")}
    if cfg.registry not in found:
        raise ValueError(
            f"params key 'register.registry': expected one of {sorted(found)}, found {cfg.registry!r} "
            "(registries are 'qin.registries' entry points; is the project installed?)"
        )
    return found[cfg.registry].load()(cfg)


def git_commit() -> str:
    """The checkout's commit; QIN_GIT_COMMIT when set (an image has no git: `make up` passes the commit it
    was built from)."""
    if os.environ.get("QIN_GIT_COMMIT"):
        return os.environ["QIN_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def code_hash() -> str:
    """Hash of the library's source: part of every cache key and of the provenance tags."""
    h = hashlib.sha256()
    root = Path(qin.__file__).parent
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def data_hash(validation_dir: str | Path) -> str:
    """Hash of the validated data files (their md5s, as recorded by `validate`)."""
    summary = read_json(Path(validation_dir) / SUMMARY)
    return digest({name: info.get("md5") for name, info in summary["files"].items()})


# A comparison of the two on the candidate's data (qin/registry/judge.py), or why there is none.
Judge = Callable[[VersionInfo, VersionInfo], "Comparison | str"]


def decide(
    candidate: VersionInfo,
    holder: VersionInfo | None,
    alias: str,
    min_delta: float,
    judged: Comparison | str | None = None,
) -> tuple[Literal["move", "holds", "refused"], str]:
    """The promotion rule: may `candidate` take `alias` from `holder`? Returns (what happens, why).
    `judged`: when their data versions differ, both models' AUCs on the candidate's valid split (or why
    they could not be measured)."""
    if holder is None:
        return "move", f"no version holds '{alias}' yet"
    c, h = candidate.version, holder.version
    if h == c:
        return "holds", f"version {c} already holds '{alias}'"
    if candidate.data_hash is None or candidate.data_hash != holder.data_hash:
        different = (
            f"version {c} was evaluated on data version {candidate.data_hash}, version {h} (holding "
            f"'{alias}') on {holder.data_hash}"
        )
        if not isinstance(judged, Comparison):
            why = f", and they were not compared on the candidate's data: {judged}" if judged else ""
            return "refused", f"{different}: valid AUCs on different data do not compare{why}"
        on = (
            f"on data version {judged.data_hash}'s valid rows that both can score ({judged.rows:,}, "
            f"{judged.share:.1%}), "
        )
        return _by_auc(judged.candidate_auc, judged.holder_auc, h, min_delta, on, " (re-scored)")
    if candidate.valid_auc is None:
        return "refused", f"version {c} has no valid_auc tag to compare"
    if holder.valid_auc is None:
        return "move", f"version {h} (holding '{alias}') has no valid_auc to compare with"
    return _by_auc(candidate.valid_auc, holder.valid_auc, h, min_delta)


def _by_auc(
    auc: float, holder_auc: float, h: str, min_delta: float, on: str = "", rescored: str = ""
) -> tuple[Literal["move", "refused"], str]:
    gain = auc - holder_auc
    if gain > 0 and gain >= min_delta - 1e-12:
        return "move", (
            f"{on}valid_auc {auc:.5f} beats version {h}'s {holder_auc:.5f}{rescored} "
            f"by {gain:.5f} (min_delta {min_delta:g})"
        )
    return "refused", (
        f"{on}valid_auc {auc:.5f} does not beat version {h}'s {holder_auc:.5f}{rescored} "
        f"by min_delta {min_delta:g} (difference {gain:+.5f})"
    )


def alias_history(version: VersionInfo) -> list[dict[str, Any]]:
    """The alias moves recorded on a version (oldest first), from its `alias_history.<n>` tags."""
    entries = []
    for key, value in version.tags.items():
        m = re.fullmatch(rf"{HISTORY_TAG}\.(\d+)", key)
        if m:
            entries.append((int(m.group(1)), json.loads(value)))
    return [entry for _, entry in sorted(entries, key=lambda e: e[0])]


def target_alias(cfg: RegisterConfig, to: str) -> str:
    aliases = {"staging": cfg.alias, "production": cfg.production_alias}
    if to not in aliases:
        raise ValueError(f"promote: expected --to one of {sorted(aliases)}, found {to!r}")
    return aliases[to]


def lock_path(kind: str, *names: str) -> Path:
    """The lock file (under `layout.LOCKS`) for one shared thing, e.g. ("alias", model, alias)."""
    return layout.LOCKS / ("-".join(re.sub(r"[^A-Za-z0-9._-]", "_", n) for n in (kind, *names)) + ".lock")


def promote(
    cfg: RegisterConfig,
    to: Target,
    version: str | None = None,
    *,
    force: bool = False,
    strict: bool = True,
    by: str = "qin promote",
    registry: Registry | None = None,
    judge: Judge | None = None,
) -> dict[str, Any]:
    """Offer `version` (default: the newest) the alias for `to`, under the rules in the module docstring.

    `force` overrides the AUC and data-version rules (recorded in the history), never missing artifacts.
    A refusal raises `PromotionRefused` when `strict`, else it is reported in the result (`refused`).
    `judge` compares the two on the candidate's data when their data versions differ (`judge_on`);
    without one such an offer is refused.

    Concurrency: the decision is made against the holder read, and the move is `set_alias_if(expected=
    that holder)`; if another run moved the alias in between, the offer is decided again against the new
    holder (at most `ALIAS_TRIES` times, then `AliasContended`). The whole read-decide-set and the history
    tag run under a file lock per (model, alias) in `layout.LOCKS`, so among processes that share that
    folder a move is atomic. A client without it (another machine on the same tracking server) is kept
    correct by the re-read inside `set_alias_if`, except in the small window between that re-read and the
    set, which the registry API offers no way to close.
    """
    alias = target_alias(cfg, to)
    registry = registry or load_registry(cfg)
    name = cfg.model_name
    if version is None:
        versions = registry.versions(name)
        if not versions:
            raise PromotionRefused(f"model '{name}' has no registered version to promote")
        version = max(versions, key=lambda v: int(v.version)).version
    candidate = registry.get_version(name, str(version))
    if candidate is None:
        raise PromotionRefused(f"model '{name}' has no version {version}")
    missing = registry.missing_artifacts(name, candidate.version)
    with file_lock(lock_path("alias", name, alias)):
        for _ in range(ALIAS_TRIES):
            holder = registry.alias_holder(name, alias)
            judged = _judged(judge, candidate, holder, missing)
            status, reason = _offer(cfg, alias, candidate, holder, missing, force, judged)
            result = _promotion(cfg, to, alias, candidate, holder, status, reason)
            if isinstance(judged, Comparison):
                result["compared"] = judged.to_json()
            if status != "move":
                break
            if registry.set_alias_if(name, alias, candidate.version, expected=result["previous"]):
                result["history_tag"] = _record_move(
                    registry, cfg, candidate, holder, alias, reason, force, by, judged
                )
                break
        else:
            raise AliasContended(
                f"alias '{alias}' of model '{name}' moved {ALIAS_TRIES} times while version "
                f"{candidate.version} was offered it; nothing was changed, offer it again"
            )
    if result["refused"] and strict:
        raise PromotionRefused(f"{name} version {candidate.version} may not take '{alias}': {reason}")
    return result


def _judged(
    judge: Judge | None, candidate: VersionInfo, holder: VersionInfo | None, missing: str | None
) -> Comparison | str | None:
    """The judge's comparison when one is needed: a holder on another data version, artifacts present."""
    if judge is None or holder is None or missing is not None or holder.version == candidate.version:
        return None
    if candidate.data_hash is not None and candidate.data_hash == holder.data_hash:
        return None
    return judge(candidate, holder)


def _offer(
    cfg: RegisterConfig,
    alias: str,
    candidate: VersionInfo,
    holder: VersionInfo | None,
    missing: str | None,
    force: bool,
    judged: Comparison | str | None = None,
) -> tuple[Literal["move", "holds", "refused"], str]:
    """`decide`, with missing artifacts always refused and `force` overriding the other refusals."""
    if missing is not None:
        return "refused", f"its artifacts are missing: {missing}"
    status, reason = decide(candidate, holder, alias, cfg.min_delta, judged)
    if status == "refused" and force:
        return "move", f"forced ({reason})"
    return status, reason


def _promotion(
    cfg: RegisterConfig,
    to: Target,
    alias: str,
    candidate: VersionInfo,
    holder: VersionInfo | None,
    status: str,
    reason: str,
) -> dict[str, Any]:
    return {
        "model_name": cfg.model_name,
        "target": to,
        "alias": alias,
        "version": candidate.version,
        "previous": holder.version if holder is not None else None,
        "moved": status == "move",
        "has_alias": status in ("move", "holds"),
        "refused": status == "refused",
        "reason": reason,
        "valid_auc": candidate.valid_auc,
        "history_tag": None,
    }


def _record_move(
    registry: Registry,
    cfg: RegisterConfig,
    candidate: VersionInfo,
    holder: VersionInfo | None,
    alias: str,
    reason: str,
    force: bool,
    by: str,
    judged: Comparison | str | None = None,
) -> str:
    """Write the `alias_history.<n>` tag of a move; returns its key. A move decided on the candidate's
    data records both AUCs there, the rows compared and that data version (`compared`)."""
    entry = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "alias": alias,
        "version": candidate.version,
        "from_version": holder.version if holder is not None else None,
        "metrics": {
            "valid_auc": candidate.valid_auc,
            "from_valid_auc": holder.valid_auc if holder is not None else None,
        },
        "data_hash": candidate.data_hash,
        "min_delta": cfg.min_delta,
        "forced": force and reason.startswith("forced"),
        "by": by,
        "reason": reason,
    }
    if isinstance(judged, Comparison):
        entry["compared"] = judged.to_json()
    # Moves of other aliases (other alias locks) write history on the same version: count its entries
    # afresh, under a lock of the version's own, so two moves never take the same <n>.
    with file_lock(lock_path("history", cfg.model_name, candidate.version)):
        current = registry.get_version(cfg.model_name, candidate.version) or candidate
        key = f"{HISTORY_TAG}.{len(alias_history(current)) + 1}"
        registry.set_version_tag(cfg.model_name, candidate.version, key, json.dumps(entry, sort_keys=True))
    return key


def judge_on(
    data_dir: str | Path,
    params: Params,
    registry: Registry,
    local: dict[str, tuple[Path, str]] | None = None,
) -> Judge:
    """A `Judge` that compares two versions on `data_dir`'s valid split (qin/registry/judge.py), provided it
    holds
    the candidate's data version. Their packages: `local` (version -> (package, content hash)), else
    downloaded as `qin predict` downloads a registered version."""
    from qin.registry.judge import compare, data_hash_of
    from qin.registry.resolve import resolve_model

    def package(version: VersionInfo) -> tuple[Path, str]:
        if local and version.version in local:
            return local[version.version]
        ref = resolve_model(version.version, params.register, registry=registry)
        return ref.path, ref.model_hash

    def judge(candidate: VersionInfo, holder: VersionInfo) -> Comparison | str:
        try:
            here = data_hash_of(data_dir)
        except FileNotFoundError as exc:
            return f"the candidate's data is needed to compare them on it: {exc}"
        if candidate.data_hash != here:
            return (
                f"{data_dir} holds data version {here}, not the candidate's, so they cannot be compared on "
                f"it (give the folder holding data version {candidate.data_hash})"
            )
        try:
            packages = package(candidate), package(holder)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:  # e.g. the holder's files are gone
            return f"a package could not be had to score: {type(exc).__name__}: {exc}"
        return compare(data_dir, here, *packages, params.evaluate.batch_size)

    return judge


def gate(
    registration: str | Path,
    params: Params,
    registry: Registry | None = None,
    data_dir: str | Path | None = None,
    local: dict[str, tuple[Path, str]] | None = None,
) -> Registration:
    """The register stage's automatic step: offer the version named in `registration` (register.json) the
    staging alias through `promote`, and write the file again with the decision; returns that record.
    `data_dir`: the candidate's data, where it is judged against a holder of another data version."""
    reg = read_registration(registration)
    registry = registry or load_registry(params.register)
    judge = judge_on(data_dir, params, registry, local) if data_dir is not None else None
    decision = promote(
        params.register, "staging", reg.version, strict=False, by="register", registry=registry, judge=judge
    )
    result = dataclasses.replace(
        reg,
        gate=GateDecision(
            alias=decision["alias"],
            has_alias=decision["has_alias"],
            reason=decision["reason"],
            previous=decision["previous"],
            history_tag=decision["history_tag"],
        ),
    )
    write_registration(registration, result)
    return result


def model_card(candidate: Candidate, model_name: str, version: str) -> str:
    """A short Markdown model card for the registered version."""
    tags, params = candidate.tags, candidate.params
    rows = "\n".join(f"| {k} | {v:.5g} |" for k, v in sorted(candidate.metrics.items()))
    model = params.get("train.model.name", "?")
    return f"""# Model card: {model_name} version {version}

**Model**: `{model}` (CTR: probability that a user clicks a target item, from the user's item history,
the item's id, tags and multimodal embedding, and its like/view levels).

## Provenance
| | |
|---|---|
| data version (`data_hash`) | `{tags.get("data_hash")}` |
| git commit | `{tags.get("git_commit")}` |
| library code hash | `{tags.get("code_hash")}` |
| train settings hash | `{tags.get("params_hash")}` |
| model package hash | `{candidate.model_hash}` |
| qin version | {tags.get("qin_version")} |

The full resolved settings are logged beside this card (`config/params.yaml`) and as run params.

## Metrics (valid split)
| metric | value |
|---|---|
{rows}

## Intended use
Ranking candidate items for a user in offline experiments and staging evaluations of the QIN pipeline,
with inputs in the MicroLens_1M_x1 schema (`likes_level`, `views_level`, `item_id`, `item_seq`).

## Limitations
- Trained and evaluated on the data version above only; metrics do not carry over to other data. The
  project's default data is synthetic (a generator in the MicroLens schema), not real user behaviour.
- Item ids outside the training item table are refused (the scorer names the column and the ids); a
  history longer than the model's `max_len` is cut to its most recent items.
- Scores are click probabilities calibrated on the valid split (see `valid_ece`); recheck calibration
  before using them as absolute rates.
- Not evaluated for fairness across user groups; not intended for decisions about individuals.
"""


def check_model_config(model_dir: Path, params: Params) -> None:
    """Refuse a package whose own model config differs from `params.train.model`: the version's run logs
    those params, so they must describe the model it holds."""
    found = read_json(model_dir / "model.json").get("model")
    # Through JSON, so tuples and lists compare as model.json stores them.
    expected = json.loads(json.dumps(params.train.model.model_dump()))
    if found != expected:
        raise ValueError(
            f"{model_dir / 'model.json'}: expected the model config of params 'train.model' {expected}, "
            f"found {found}: register a package with the params it was trained with"
        )


def build_candidate(
    model_dir: Path,
    model_hash: str,
    train_metrics: str | Path,
    eval_metrics: str | Path,
    validation_dir: str | Path,
    params: Params,
    plots_dir: str | Path | None,
    extra_tags: dict[str, str],
    embed_dir: str | Path | None = None,
) -> Candidate:
    return Candidate(
        model_dir=model_dir,
        model_hash=model_hash,
        metrics={k: float(v) for k, v in read_json(eval_metrics).items()},
        history=read_json(train_metrics)["history"],
        params={
            **flatten(params.validate, "validate."),
            **flatten(params.embed, "embed."),
            **flatten(params.featurize, "featurize."),
            **flatten(params.train, "train."),
            **flatten(params.evaluate, "evaluate."),
            **flatten(params.register, "register."),
            **params.features.flat("features."),
        },
        tags={
            "model_hash": model_hash,
            "data_hash": data_hash(validation_dir),
            "params_hash": section_hash(params.train),
            "code_hash": code_hash(),
            "git_commit": git_commit(),
            "qin_version": qin.__version__,
        },
        artifacts=[
            (Path(validation_dir) / SUMMARY, "reports"),
            (Path(validation_dir) / REPORT, "reports"),
            (Path(validation_dir) / DATA_DOCS, f"reports/{DATA_DOCS}"),
            (Path(train_metrics), "reports"),
            (Path(eval_metrics), "reports"),
            *(
                [(Path(plots_dir), "reports/evaluate")]
                if plots_dir is not None and Path(plots_dir).exists()
                else []
            ),
            *([(Path(embed_dir) / "report.json", "reports/embed")] if embed_dir is not None else []),
        ],
        config_yaml=to_yaml(params),
        extra_tags=extra_tags,
    )


def stage_keys(registry: Registry, model_name: str) -> list[dict[str, str]]:
    """The stage keys each registered version came from (those registered by a flow run): what `qin gc`
    must keep."""
    return [
        json.loads(v.tags[STAGE_KEYS_TAG]) for v in registry.versions(model_name) if STAGE_KEYS_TAG in v.tags
    ]


def keep_oldest(registry: Registry, model_name: str, model_hash: str, created: Registered) -> Registered:
    """After creating `created`: if the registry holds an older version of the same package (a client that
    does not share our lock folder won the race), delete ours and return that one. The lowest version
    number wins, so racing clients all keep the same one."""
    oldest = registry.find(model_name, model_hash)
    if oldest is None or int(oldest.version) >= int(created.version):
        return created
    registry.delete_version(model_name, created.version)
    return oldest


def register(
    model_dir: str | Path,
    train_metrics: str | Path,
    eval_metrics: str | Path,
    validation_dir: str | Path,
    out_path: str | Path,
    params: Params,
    plots_dir: str | Path | None = None,
    registry: Registry | None = None,
    gate_staging: bool = True,
    embed_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
) -> Registration:
    """Register the package (once per content hash), write `out_path` (register.json) and, unless
    `gate_staging` is False (the flow runs `gate` as its own step), offer the version `staging`. Returns
    what `out_path` holds.

    Concurrency: find → log → create runs under a file lock per (model, package hash) in `layout.LOCKS`,
    so processes sharing that folder never create two versions of one package; `keep_oldest` then settles
    races with clients that do not share it.
    """
    cfg = params.register
    registry = registry or load_registry(cfg)
    model_dir = Path(model_dir)
    check_model_config(model_dir, params)
    metrics = read_json(eval_metrics)
    model_hash = tree_hash([model_dir])
    with file_lock(lock_path("register", cfg.model_name, model_hash[:24])):
        registered = registry.find(cfg.model_name, model_hash)
        newly = registered is None
        if registered is None:
            # A flow run's inputs come from the store: the version records the stage keys behind it.
            keys = lineage(eval_metrics)
            extra = {STAGE_KEYS_TAG: json.dumps(keys, sort_keys=True)} if keys else {}
            candidate = build_candidate(
                model_dir,
                model_hash,
                train_metrics,
                eval_metrics,
                validation_dir,
                params,
                plots_dir,
                extra,
                embed_dir,
            )
            created = registry.log_and_register(cfg.model_name, candidate)
            registered = keep_oldest(registry, cfg.model_name, model_hash, created)
            newly = registered == created
    result = Registration(
        model_name=cfg.model_name,
        run_id=registered.run_id,
        version=registered.version,
        newly_registered=newly,
        valid_auc=float(metrics["valid_auc"]),
        model_hash=model_hash,
    )
    write_registration(out_path, result)
    if gate_staging:
        local = {result.version: (model_dir, model_hash)}
        result = gate(out_path, params, registry, data_dir, local)
    return result
