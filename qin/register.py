"""The `register` stage: record a trained package in the model registry (qin/registry/protocol.py) and
offer the new version the staging alias (`gate`, qin/registry/promotion.py).

Idempotent: a package whose content hash is already registered is not logged again; its existing run
and version are reported instead. Under concurrency (see `register`): one version per content hash.
A version is created with its tags (`Candidate.version_tags`) in one call, after its model files, so a
version the registry lists is always one `find` recognises. The stage's result is a `Registration`
(qin/registry/registration.py), written to register.json.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qin.registry.promotion import gate, lock_path
from qin.registry.protocol import Candidate, Registered, Registry, load_registry
from qin.registry.provenance import provenance_tags, stage_keys_tag, validated_data
from qin.registry.registration import Registration, write_registration
from qin.runs.io import file_lock, read_json, tree_hash
from qin.settings.params import Params, to_yaml
from qin.settings.sections import flatten, section_hash
from qin.validate import DATA_DOCS, REPORT, SUMMARY


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
    valid_auc = float(read_json(eval_metrics)["valid_auc"])
    model_hash = tree_hash([model_dir])
    registered, newly = _find_or_log(
        registry,
        cfg.model_name,
        model_hash,
        lambda: build_candidate(
            model_dir, model_hash, train_metrics, eval_metrics, validation_dir, params, plots_dir, embed_dir
        ),
    )
    result = Registration(
        model_name=cfg.model_name,
        run_id=registered.run_id,
        version=registered.version,
        newly_registered=newly,
        valid_auc=valid_auc,
        model_hash=model_hash,
    )
    write_registration(out_path, result)
    if gate_staging:
        result = gate(out_path, params, registry, data_dir, {result.version: (model_dir, model_hash)})
    return result


def _find_or_log(
    registry: Registry, model_name: str, model_hash: str, candidate: Callable[[], Candidate]
) -> tuple[Registered, bool]:
    """The version of the package whose content hash is `model_hash`, and whether this call created it:
    found, else logged and registered from `candidate()`, under the package's lock."""
    with file_lock(lock_path("register", model_name, model_hash[:24])):
        registered = registry.find(model_name, model_hash)
        if registered is not None:
            return registered, False
        created = registry.log_and_register(model_name, candidate())
        registered = keep_oldest(registry, model_name, model_hash, created)
        return registered, registered == created


def build_candidate(
    model_dir: Path,
    model_hash: str,
    train_metrics: str | Path,
    eval_metrics: str | Path,
    validation_dir: str | Path,
    params: Params,
    plots_dir: str | Path | None = None,
    embed_dir: str | Path | None = None,
) -> Candidate:
    """What the stage logs for the package in `model_dir` (content hash `model_hash`): the final metrics and
    per-epoch history, every setting, the provenance tags, the reports and, for a flow run, the stage keys
    behind it."""
    data = validated_data(validation_dir)
    return Candidate(
        model_dir=model_dir,
        model_hash=model_hash,
        metrics={k: float(v) for k, v in read_json(eval_metrics).items()},
        history=read_json(train_metrics)["history"],
        params=_settings(params),
        tags=provenance_tags(model_hash, data, section_hash(params.train)),
        artifacts=_reports(train_metrics, eval_metrics, validation_dir, plots_dir, embed_dir),
        config_yaml=to_yaml(params),
        extra_tags=stage_keys_tag(eval_metrics),
        data=data,
    )


def _settings(params: Params) -> dict[str, Any]:
    """Every setting the pipeline's stages read, flattened to dotted keys (the run's params)."""
    return {
        **flatten(params.validate, "validate."),
        **flatten(params.embed, "embed."),
        **flatten(params.featurize, "featurize."),
        **flatten(params.train, "train."),
        **flatten(params.evaluate, "evaluate."),
        **flatten(params.register, "register."),
        **params.features.flat("features."),
    }


def _reports(
    train_metrics: str | Path,
    eval_metrics: str | Path,
    validation_dir: str | Path,
    plots_dir: str | Path | None,
    embed_dir: str | Path | None,
) -> list[tuple[Path, str]]:
    """The reports and metrics to attach: (a file or folder, the run's artifact folder to put it in)."""
    return [
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
    ]


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


def keep_oldest(registry: Registry, model_name: str, model_hash: str, created: Registered) -> Registered:
    """After creating `created`: if the registry holds an older version of the same package (a client that
    does not share our lock folder won the race), delete ours and return that one. The lowest version
    number wins, so racing clients all keep the same one."""
    oldest = registry.find(model_name, model_hash)
    if oldest is None or int(oldest.version) >= int(created.version):
        return created
    registry.delete_version(model_name, created.version)
    return oldest
