"""The Markdown model card logged with each registered version, rendered from the template beside this
module (model_card.md.j2)."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

import jinja2

from qin.registry.protocol import Candidate

TEMPLATE = "model_card.md.j2"


@cache
def _template() -> jinja2.Template:
    # Blocks take their whole line and the file's last newline stays, so the card reads as the template does.
    env = jinja2.Environment(
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
        autoescape=False,
    )
    return env.from_string(files("qin.registry").joinpath(TEMPLATE).read_text())


def version_description(candidate: Candidate, model_name: str, version: str, run_id: str) -> str:
    """The registered version's description: what it is and where it came from."""
    tags, auc = candidate.tags, candidate.metrics.get("valid_auc")
    what = f"{model_name} version {version}: a `{candidate.params.get('train.model.name', '?')}` CTR model"
    data = candidate.data
    source = f"data {tags.get('data_hash')}" + (f" from {data.folder}" if data is not None else "")
    shown = f"{auc:.4f}" if auc is not None else "not measured"
    return (
        f"{what}, trained on {source}; valid AUC {shown}. Code: git {tags.get('git_commit')}, qin "
        f"{tags.get('qin_version')}; settings and reports in MLflow run {run_id}, whose description is the "
        "model card."
    )


def model_card(candidate: Candidate, model_name: str, version: str) -> str:
    """A short Markdown model card for the registered version: its provenance tags, its metrics (sorted by
    name, 5 significant digits), intended use and limitations. A tag it lacks reads None."""
    return _template().render(
        model_name=model_name,
        version=version,
        model=candidate.params.get("train.model.name", "?"),
        model_hash=candidate.model_hash,
        tags=candidate.tags,
        metrics=sorted(candidate.metrics.items()),
    )
