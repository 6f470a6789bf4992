"""Promotion: may a registered version take an alias, and moving it (`promote`, one code path for the
register stage's automatic `gate` and for `qin promote`).

- `staging` (params `register.alias`): the register stage offers every new version; `qin promote --to
  staging` offers one by hand.
- `production` (params `register.production_alias`, `champion`): only `qin promote --to production`.
A version takes an alias when no version holds it, or when its valid AUC beats the holder's by at least
`register.min_delta`: the two `valid_auc` tags on the same data version (`data_hash` tag); on a new data
version, both models re-scored on the candidate's valid split (a `Judge`, `judge_on`, qin/registry/judge.py).
A version whose run or model artifacts are missing is always refused. Every move is recorded on the version
as a tag `alias_history.<n>` (JSON: when, alias, from which version, metrics, what was compared on new
data, reason, by whom), read back with `alias_history`.

Concurrency: a move is a compare-and-set against the holder the decision was made on
(`set_alias_if(expected=that holder)`); if another run moved the alias in between, the offer is decided
again against the new holder (at most `ALIAS_TRIES` times, then `AliasContended`). The whole
read-decide-set and the history tag run under a file lock per (model, alias) in `layout.LOCKS`
(`lock_path`), so among processes that share that folder a move is atomic. A client without it (another
machine on the same tracking server) is kept correct by the re-read inside `set_alias_if`, except in the
small window between that re-read and the set, which the registry API offers no way to close.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from qin.registry.judge import Comparison, Judge, judge_on
from qin.registry.protocol import HISTORY_TAG, Registry, VersionInfo, load_registry
from qin.registry.registration import GateDecision, Registration, read_registration, write_registration
from qin.runs import layout
from qin.runs.io import file_lock
from qin.settings.params import Params
from qin.settings.sections import RegisterConfig

# How often `promote` re-decides when the alias moved under it before it gives up.
ALIAS_TRIES = 10
Target = Literal["staging", "production"]
Status = Literal["move", "holds", "refused"]


class PromotionRefused(RuntimeError):
    """A version may not take the alias it was offered; the message says why."""


class AliasContended(RuntimeError):
    """The alias kept moving between `promote`'s read and its compare-and-set; nothing was decided."""


@dataclass(frozen=True)
class Promotion:
    """What `promote` decided for one version and alias, and what it did."""

    model_name: str
    target: Target
    alias: str
    version: str
    status: Status  # it moves to the alias, holds it already, or is refused it
    reason: str  # why (the promotion rule's words)
    previous: str | None  # the version holding the alias when it was decided (None: no holder)
    valid_auc: float | None  # the version's own (its tag)
    history_tag: str | None = None  # the version tag recording the move (`alias_history.<n>`)
    compared: Comparison | None = None  # both models on the candidate's data, when it was judged there

    @property
    def moved(self) -> bool:
        return self.status == "move"

    @property
    def has_alias(self) -> bool:
        return self.status in ("move", "holds")

    @property
    def refused(self) -> bool:
        return self.status == "refused"


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
) -> Promotion:
    """Offer `version` (default: the newest) the alias for `to`, under the rules and the compare-and-set in
    the module docstring.

    `force` overrides the AUC and data-version rules (recorded in the history), never missing artifacts.
    A refusal raises `PromotionRefused` when `strict`, else it is reported in the result (`refused`).
    `judge` compares the two on the candidate's data when their data versions differ (`judge_on`);
    without one such an offer is refused.
    """
    alias = target_alias(cfg, to)
    registry = registry or load_registry(cfg)
    name = cfg.model_name
    candidate = _offered(registry, name, version)
    missing = registry.missing_artifacts(name, candidate.version)
    with file_lock(lock_path("alias", name, alias)):
        for _ in range(ALIAS_TRIES):
            holder = registry.alias_holder(name, alias)
            result = _decision(cfg, to, alias, candidate, holder, missing, force, judge)
            if not result.moved:
                break
            if registry.set_alias_if(name, alias, candidate.version, expected=result.previous):
                tag = _record_move(registry, cfg, candidate, holder, result, force, by)
                result = dataclasses.replace(result, history_tag=tag)
                break
        else:
            raise AliasContended(
                f"alias '{alias}' of model '{name}' moved {ALIAS_TRIES} times while version "
                f"{candidate.version} was offered it; nothing was changed, offer it again"
            )
    if result.refused and strict:
        raise PromotionRefused(f"{name} version {candidate.version} may not take '{alias}': {result.reason}")
    return result


def _offered(registry: Registry, name: str, version: str | None) -> VersionInfo:
    """The version offered: `version`, else the newest one."""
    if version is None:
        versions = registry.versions(name)
        if not versions:
            raise PromotionRefused(f"model '{name}' has no registered version to promote")
        version = max(versions, key=lambda v: int(v.version)).version
    candidate = registry.get_version(name, str(version))
    if candidate is None:
        raise PromotionRefused(f"model '{name}' has no version {version}")
    return candidate


def _judged(
    judge: Judge | None, candidate: VersionInfo, holder: VersionInfo | None, missing: str | None
) -> Comparison | str | None:
    """The judge's comparison when one is needed: a holder on another data version, artifacts present."""
    if judge is None or holder is None or missing is not None or holder.version == candidate.version:
        return None
    if candidate.data_hash is not None and candidate.data_hash == holder.data_hash:
        return None
    return judge(candidate, holder)


def _decision(
    cfg: RegisterConfig,
    to: Target,
    alias: str,
    candidate: VersionInfo,
    holder: VersionInfo | None,
    missing: str | None,
    force: bool,
    judge: Judge | None,
) -> Promotion:
    """`decide` on an offer to take `alias` from `holder`, with missing artifacts always refused and `force`
    overriding the other refusals."""
    judged = _judged(judge, candidate, holder, missing)
    status: Status
    if missing is not None:
        status, reason = "refused", f"its artifacts are missing: {missing}"
    else:
        status, reason = decide(candidate, holder, alias, cfg.min_delta, judged)
        if status == "refused" and force:
            status, reason = "move", f"forced ({reason})"
    return Promotion(
        model_name=cfg.model_name,
        target=to,
        alias=alias,
        version=candidate.version,
        status=status,
        reason=reason,
        previous=holder.version if holder is not None else None,
        valid_auc=candidate.valid_auc,
        compared=judged if isinstance(judged, Comparison) else None,
    )


def _record_move(
    registry: Registry,
    cfg: RegisterConfig,
    candidate: VersionInfo,
    holder: VersionInfo | None,
    move: Promotion,
    force: bool,
    by: str,
) -> str:
    """Write the `alias_history.<n>` tag of a move; returns its key. A move decided on the candidate's
    data records both AUCs there, the rows compared and that data version (`compared`)."""
    entry: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "alias": move.alias,
        "version": candidate.version,
        "from_version": holder.version if holder is not None else None,
        "metrics": {
            "valid_auc": candidate.valid_auc,
            "from_valid_auc": holder.valid_auc if holder is not None else None,
        },
        "data_hash": candidate.data_hash,
        "min_delta": cfg.min_delta,
        "forced": force and move.reason.startswith("forced"),
        "by": by,
        "reason": move.reason,
    }
    if move.compared is not None:
        entry["compared"] = move.compared.to_json()
    # Moves of other aliases (other alias locks) write history on the same version: count its entries
    # afresh, under a lock of the version's own, so two moves never take the same <n>.
    with file_lock(lock_path("history", cfg.model_name, candidate.version)):
        current = registry.get_version(cfg.model_name, candidate.version) or candidate
        key = f"{HISTORY_TAG}.{len(alias_history(current)) + 1}"
        registry.set_version_tag(cfg.model_name, candidate.version, key, json.dumps(entry, sort_keys=True))
    return key


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
    p = promote(
        params.register, "staging", reg.version, strict=False, by="register", registry=registry, judge=judge
    )
    decision = GateDecision(
        alias=p.alias, has_alias=p.has_alias, reason=p.reason, previous=p.previous, history_tag=p.history_tag
    )
    result = dataclasses.replace(reg, gate=decision)
    write_registration(registration, result)
    return result
