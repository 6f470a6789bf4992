"""The model card logged with each version: its text for a version with every provenance tag, the model's
name and several metrics, and for one without them (the expected cards are in tests/pipeline/model_cards/)."""

from pathlib import Path

import pytest

from qin.registry.card import model_card
from qin.registry.protocol import Candidate

CARDS = Path(__file__).with_name("model_cards")

FULL = Candidate(
    model_dir=Path("artifacts/model"),
    model_hash="f" * 64,
    metrics={"valid_auc": 0.712345678, "valid_logloss": 0.5, "valid_ece": 1.5e-7, "oracle_auc": 123456.789},
    history=[],
    params={"train.model.name": "qin", "train.epochs": 3},
    tags={
        "data_hash": "d" * 16,
        "git_commit": "c" * 40,
        "code_hash": "e" * 16,
        "params_hash": "p" * 16,
        "qin_version": "0.1.0",
    },
)
BARE = Candidate(model_dir=Path("model"), model_hash="h", metrics={}, history=[], params={}, tags={})


@pytest.mark.parametrize(("candidate", "card"), [(FULL, "full.md"), (BARE, "bare.md")])
def test_the_model_card_reads_as_before(candidate: Candidate, card: str) -> None:
    assert model_card(candidate, "qin-ctr", "7") == (CARDS / card).read_text()
