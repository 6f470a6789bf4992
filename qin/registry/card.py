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
