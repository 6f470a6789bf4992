"""A record per flow run, `artifacts/runs/<flow run id>/`: what the run used and what it did.

    params.yaml     the settings it ran with (params.yaml with the run's model and overrides applied)
    run.json        its flow, parameters and start time, and the stage keys it used (ran or reused)
    register.json   the register stage's result
    failure.md      when it failed: the failed stage, the error, the stage's inputs and outputs

The stages read their settings from the record's params.yaml, so two runs started together with different
settings never read each other's; everything else they write is content-addressed (qin/runs/store.py).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from qin.runs import layout, pipeline
from qin.runs.io import atomic_file, file_lock, read_json, write_json
from qin.settings.params import write_resolved_params

RECORD = "run.json"
PARAMS = "params.yaml"
FAILURE = "failure.md"


def record_dir(run_id: str, root: str | Path = layout.RUNS) -> Path:
    return Path(root) / run_id


def start(
    record: Path,
    params_src: str | Path,
    flow: str,
    parameters: dict[str, Any],
    model: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> Path:
    """Create the record with the run's settings; return the params file the stages read."""
    params = write_resolved_params(params_src, record / PARAMS, overrides, model)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    update(record, flow=flow, parameters=parameters, started=now, stages=[])
    return params


def update(record: Path, **fields: Any) -> dict[str, Any]:
    """Set `fields` in run.json (read-modify-write under the record's lock: tasks of a run may overlap)."""
    with file_lock(record / ".lock"):
        current = read_json(record / RECORD) if (record / RECORD).exists() else {"id": record.name}
        current.update(fields)
        write_json(record / RECORD, current)
    return current  # type: ignore[no-any-return]


def add_stage(record: Path, entry: dict[str, Any]) -> None:
    """Append one stage's outcome ({"stage", "key", "dir", "how", "seconds"}) to run.json."""
    with file_lock(record / ".lock"):
        stages = read(record).get("stages", []) if (record / RECORD).exists() else []
        update(record, stages=[*stages, entry])


def read(record: Path) -> dict[str, Any]:
    return read_json(record / RECORD)  # type: ignore[no-any-return]


def recent(n: int, root: str | Path = layout.RUNS) -> list[dict[str, Any]]:
    """The `n` most recently started runs' records (newest first)."""
    records = [read_json(p) for p in Path(root).glob(f"*/{RECORD}")]
    return sorted(records, key=lambda r: str(r.get("started", "")), reverse=True)[:n]


def failure_report(record: Path, failed: list[str], finished: list[str], error: str) -> str:
    """failure.md: which stage failed, the error, and the stage's inputs and outputs (from the stage table
    and the keys the run had reached); written atomically into the record. Returns the text."""
    info = read(record) if (record / RECORD).exists() else {}
    done = {e["stage"]: e for e in info.get("stages", [])}
    name = failed[-1] if failed else None
    lines = [
        f"# {info.get('flow', 'flow run')} failed",
        "",
        f"- failed stage: **{name or 'none (the flow itself, before or between stages)'}**",
        f"- stages finished before it: {', '.join(finished) or 'none'}",
        f"- parameters: `{info.get('parameters', {})}`; settings: `{record / PARAMS}`",
        "",
        "## Error",
        "",
        "```text",
        error,
        "```",
    ]
    if name in {s.name for s in pipeline.STAGES}:
        s = pipeline.stage(name)
        lines += ["", f"## `{name}`", "", "inputs:"]
        for i in s.inputs:
            if i.stage == pipeline.DATA:
                lines.append(f"- `{info.get('parameters', {}).get('data', layout.DATA)}` (the raw data)")
            elif i.stage == pipeline.MODEL:
                lines.append(f"- `{info.get('model_dir', 'the model package')}` (the model package)")
            else:
                where = f"{done[i.stage]['dir']}/{i.output}" if i.stage in done else f"{i.stage}/{i.output}"
                lines.append(f"- `{where}`")
        if s.content_addressed:
            lines += [
                "",
                f"outputs: nothing published; its key's folder under `{layout.STORE / name}/` appears only "
                "when the stage succeeds (a partial one, `<key>.partial/`, holds what it wrote so far, e.g. "
                "a report or a checkpoint, and is continued by the next run of the same key)",
            ]
        else:
            lines += ["", "outputs:", *[f"- `{record / o.name}`" for o in s.outputs]]
    lines += ["", "Fix the cause and run the flow again: stages that finished are reused by their keys.", ""]
    text = "\n".join(lines)
    with atomic_file(record / FAILURE) as tmp:
        tmp.write_text(text)
    return text
