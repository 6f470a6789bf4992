"""The feature table: every model input declared as data, in one table (the `features` settings section).

Each row of the table is one input: its name, the column it comes from and in which file (`source`), its
`kind`, its vocabulary and the width of its embedding. The table drives everything that knows a column:
the files' schema and the gate's checks on the declared columns (qin/validate.py), featurize's arrays
(qin/featurize.py), every model's input layer (qin/models/blocks.py `FeatureEncoder`), the scoring
requests' checks (qin/serving/request.py), and the MLflow signature of a registered model (flows/tracking.py).

Kinds:
    target       the row's target item (an id into the item table); exactly one, from the row files
    history      the row's past items (a list of item ids, 0 = padding, most recent last); exactly one
    categorical  one integer id per row (source row) or per item (source item_info / item_feature)
    sequence     a fixed-length list of integer ids per item, 0 = padding (e.g. item_tags): the mean of
                 the non-padding ids' embeddings
    dense        a fixed-length float vector (e.g. item_emb_d128), projected by a linear layer (no bias)

A feature whose source is an item table belongs to the item: it is looked up for the target and for every
history item, and its vectors are concatenated into the item vector. A feature whose source is the row files
belongs to the row (the user, the impression): its vector joins the target item and the pooled history.

Vocabularies (categorical, sequence): `vocab: N` (ids 0..N-1), `vocab: data` (N = the largest id in the
train split, or in the item table, plus one) or `hash: N` (id = value mod N, any integer). An id outside
the vocabulary is refused (by the gate, by featurize for valid/test against the train split's vocabulary,
and at the door when scoring) unless the feature names an `oov` id, which such a value then takes. The data
and requests carry the raw values; the model maps them to ids (qin/models/blocks.py `map_ids`), so a model
package scores raw rows as its training data had them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from qin.data import schema

Kind = Literal["target", "history", "categorical", "sequence", "dense"]
Source = Literal["row", "item_info", "item_feature"]
SOURCE_FILES: dict[str, str] = {"item_info": schema.ITEM_FILE, "item_feature": schema.FEATURE_FILE}
# The shipped tables (params/features/); `features:` in params.yaml names one of them, another file, or
# holds the list itself.
TABLES = Path(__file__).resolve().parents[2] / "params" / "features"
DEFAULT_FILE = TABLES / "default.yaml"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class Feature(BaseModel):
    """One model input (see the module's docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    name: str
    kind: Kind
    source: Source = "row"
    column: str | None = None  # its column in the source file; default: the name
    vocab: int | Literal["data"] | None = None  # categorical, sequence
    hash: int | None = None  # categorical: ids hashed to this many buckets (instead of a vocab)
    oov: int | None = None  # the id a value outside the vocabulary takes; None: such a value is refused
    length: int | None = None  # sequence: the list's length
    dim: int | None = None  # dense: the vector's length
    embedding: int | None = None  # the width of its vector in the model; None: the model's embedding_dim

    @property
    def col(self) -> str:
        return self.column or self.name

    @property
    def belongs(self) -> Literal["row", "item"]:
        return "row" if self.source == "row" else "item"

    @property
    def is_key(self) -> bool:
        """The item table's own id (the item's id embedding): its values are the row numbers."""
        return self.source == "item_info" and self.col == schema.TARGET

    @property
    def padding(self) -> bool:
        """Whether id 0 is padding (its embedding stays 0): the item id and sequences."""
        return self.is_key or self.kind == "sequence"

    @property
    def file(self) -> str | None:
        """The item file it comes from (None: the row files)."""
        return SOURCE_FILES.get(self.source)

    @model_validator(mode="after")
    def _check(self) -> Feature:
        problems = self._problems()
        if problems:
            raise ValueError(problems[0])
        return self

    def _problems(self) -> list[str]:
        out = []
        if not _NAME.match(self.name):
            out.append(f"name: expected letters, digits and '_' (a letter first), found {self.name!r}")
        if self.kind in ("target", "history") and self.source != "row":
            out.append(f"source: expected 'row' for kind '{self.kind}', found {self.source!r}")
        if self.kind == "sequence" and self.source == "row":
            out.append(
                "kind: 'sequence' is supported for item features only (source item_info or item_feature)"
            )
        ids = self.kind in ("categorical", "sequence")
        if ids and (self.vocab is None) == (self.hash is None):
            out.append(f"vocab/hash: kind '{self.kind}' needs exactly one of them")
        if not ids and (self.vocab, self.hash, self.oov) != (None, None, None):
            out.append(
                f"vocab/hash/oov: only categorical and sequence features have them (kind '{self.kind}')"
            )
        if self.hash is not None and self.oov is not None:
            out.append("oov: a hashed feature has no out-of-vocabulary id (every integer hashes to a bucket)")
        if self.kind == "sequence" and self.hash is not None:
            out.append("hash: sequences take a vocab (a fixed size or data)")
        for key in ("vocab", "hash", "length", "dim", "embedding"):
            value = getattr(self, key)
            if isinstance(value, int) and value < 1:
                out.append(f"{key}: expected a positive integer, found {value}")
        if (self.kind == "sequence") != (self.length is not None):
            out.append("length: expected for a sequence feature (and only for one)")
        if (self.kind == "dense") != (self.dim is not None):
            out.append("dim: expected for a dense feature (and only for one)")
        if self.kind in ("target", "history") and self.embedding is not None:
            out.append(f"embedding: kind '{self.kind}' takes the item vector's width (the item features')")
        if self.oov is not None and isinstance(self.vocab, int) and not 0 <= self.oov < self.vocab:
            out.append(f"oov: expected an id in 0..{self.vocab - 1}, found {self.oov}")
        return out


class FeatureTable(BaseModel):
    """The declared model inputs, in order: the row features' vectors and the item features' vectors are
    concatenated in the table's order."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    features: tuple[Feature, ...]

    @model_validator(mode="after")
    def _check(self) -> FeatureTable:
        names = [f.name for f in self.features]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"name: expected each name once, found {twice} more than once")
        for kind in ("target", "history"):
            found = [f.name for f in self.features if f.kind == kind]
            if len(found) != 1:
                raise ValueError(f"kind: expected exactly one feature of kind '{kind}', found {found}")
        if not self.item:
            raise ValueError("expected at least one item feature (source item_info or item_feature)")
        return self

    @cached_property
    def target(self) -> Feature:
        return next(f for f in self.features if f.kind == "target")

    @cached_property
    def history(self) -> Feature:
        return next(f for f in self.features if f.kind == "history")

    @cached_property
    def row(self) -> tuple[Feature, ...]:
        """The row's own features (not the target or the history)."""
        return tuple(f for f in self.features if f.source == "row" and f.kind not in ("target", "history"))

    @cached_property
    def item(self) -> tuple[Feature, ...]:
        return tuple(f for f in self.features if f.belongs == "item")

    @cached_property
    def inputs(self) -> tuple[Feature, ...]:
        """The features a row of data or a request carries: row features, the target and the history."""
        return tuple(f for f in self.features if f.source == "row")

    @cached_property
    def columns(self) -> tuple[str, ...]:
        """The row columns the models read, in table order: what featurize keeps and a request carries."""
        return tuple(f.col for f in self.inputs)

    def from_file(self, name: str) -> tuple[Feature, ...]:
        """The item features read from item file `name` (schema.ITEM_FILE or schema.FEATURE_FILE)."""
        return tuple(f for f in self.item if f.file == name)

    def plain(self) -> list[dict[str, Any]]:
        """The table as YAML/JSON writes it (unset fields left out)."""
        return [f.model_dump(exclude_none=True) for f in self.features]

    def flat(self, prefix: str = "") -> dict[str, str]:
        """`{"features.likes_level": '{"kind": ...}', ...}`: one logged param per feature."""
        return {f"{prefix}{row['name']}": json.dumps(row, sort_keys=True) for row in self.plain()}


def parse(value: Any, where: str = "features") -> FeatureTable:
    """The table from a list of mappings; a bad entry is refused naming `where[i].key`, the expected and
    the found value."""
    if not isinstance(value, list):
        raise ValueError(f"params key '{where}': expected a list of features or a file, found {value!r}")
    try:
        return FeatureTable(features=tuple(value))
    except ValidationError as exc:
        raise ValueError(_message(exc, value, where)) from None


def _message(exc: ValidationError, value: list[Any], where: str) -> str:
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    if loc[:1] == ["features"] and len(loc) > 1:
        i = int(loc[1])
        entry = value[i] if isinstance(value[i], dict) else {}
        key = f"{where}[{i}]" + (f" ({entry.get('name')})" if entry.get("name") else "")
        rest = loc[2:]
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            return f"params key '{key}.{rest[0]}' is not a setting; allowed: {sorted(Feature.model_fields)}"
        if rest and err["type"] != "value_error":
            found = err.get("input")
            return f"params key '{key}.{rest[0]}': expected {_expected(err)}, found {found!r}"
        return f"params key '{key}': {msg}"
    return f"params key '{where}': {err['msg'].removeprefix('Value error, ')}"


def _expected(err: Mapping[str, Any]) -> str:
    ctx = err.get("ctx") or {}
    if "expected" in ctx:
        return f"one of {ctx['expected']}"
    kinds = {"int_type": "an integer", "string_type": "a string", "missing": "a value"}
    return kinds.get(err["type"], err["msg"])


def load(value: Any) -> FeatureTable:
    """The table `features:` gives: a list, or the path of a YAML file holding one under its key `features`
    (a mapping, as DVC reads a params file; a relative path from
    the working directory, the project root, else from this project's root, where params/features/ is)."""
    if isinstance(value, str):
        path = Path(value)
        if not path.is_absolute() and not path.is_file():
            path = TABLES.parents[1] / value
        if not path.is_file():
            raise ValueError(
                f"params key 'features': expected a feature table file, found {value!r} (no such file)"
            )
        raw = yaml.safe_load(path.read_text())
        if not isinstance(raw, dict) or set(raw) != {"features"}:
            found = repr(raw)[:80]
            raise ValueError(
                f"{value}: expected a mapping with one key, 'features' (the list), found {found}"
            )
        try:
            return parse(raw["features"])
        except ValueError as exc:
            raise ValueError(f"{value}: {exc}") from None
    return parse(value)


def default() -> FeatureTable:
    """Today's inputs, the challenge baseline's: params/features/default.yaml."""
    return load(str(DEFAULT_FILE))


class FeatureSpec(BaseModel):
    """A table resolved against its data: each categorical or sequence feature's vocabulary size and each
    dense feature's width (`sizes`), and the item vocabulary (ids 0..n_items-1, 0 = padding). Featurize
    writes it; a model is built from it, and its package keeps it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    table: FeatureTable
    sizes: dict[str, int]
    n_items: int

    @cached_property
    def history(self) -> str:
        return self.table.history.col

    @cached_property
    def target(self) -> str:
        return self.table.target.col

    def size(self, feature: Feature) -> int:
        return self.sizes[feature.name]

    def plain(self) -> dict[str, Any]:
        return {"table": self.table.plain(), "sizes": dict(self.sizes), "n_items": self.n_items}

    @classmethod
    def read(cls, stored: Mapping[str, Any]) -> FeatureSpec:
        """From `plain()`, or from a package written before the table (its fixed inputs' vocabularies)."""
        if "table" in stored:
            return cls(
                table=parse(list(stored["table"])), sizes=dict(stored["sizes"]), n_items=stored["n_items"]
            )
        return default_spec(int(stored["n_items"]), int(stored["n_tags"]))


# A package written before the table: its item arrays' files, by the default table's feature names.
LEGACY_ITEM_FILES = {schema.TAGS: "item_tags.npy", schema.ITEM_EMB: "item_emb.npy"}


def default_spec(n_items: int, n_tags: int) -> FeatureSpec:
    """The default table's spec for `n_items` items and `n_tags` tag ids."""
    table = default()
    sizes = {f.name: _fixed_size(f) for f in table.features if _fixed_size(f)}
    (tags,) = (f for f in table.item if f.kind == "sequence")
    (key,) = (f for f in table.item if f.is_key)
    sizes |= {tags.name: n_tags, key.name: n_items}
    return FeatureSpec(table=table, sizes=sizes, n_items=n_items)


def _fixed_size(f: Feature) -> int:
    """Its size where the table alone gives it (a fixed vocab, hash buckets, a dense width), else 0."""
    if f.kind == "dense":
        return int(f.dim or 0)
    if f.hash is not None:
        return f.hash
    return f.vocab if isinstance(f.vocab, int) else 0


def vocab_size(f: Feature, values: Iterable[np.ndarray]) -> int:
    """Its size: fixed by the table, or (vocab: data) the largest id among `values` plus one."""
    fixed = _fixed_size(f)
    if fixed:
        return fixed
    return max((int(v.max()) for v in values if v.size), default=0) + 1


def outside(f: Feature, values: np.ndarray, size: int) -> np.ndarray:
    """Where `values` of categorical or sequence feature `f` have no id of their own (outside 0..size-1; a
    hashed feature's never): what is refused, or takes the oov id where the feature names one."""
    values = np.asarray(values)
    if f.hash is not None or values.dtype.kind not in "iu":
        return np.zeros(values.shape, dtype=bool)
    return (values < 0) | (values >= size)
