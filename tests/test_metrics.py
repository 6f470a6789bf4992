import numpy as np
import pytest
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from qin.metrics import log_loss, roc_auc


def test_auc_and_logloss_match_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(2000) < 0.3
    s = np.round(rng.random(2000) + 0.3 * y, 2)  # rounded: many ties
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    p = np.clip(s / s.max(), 0.01, 0.99)
    assert log_loss(y, p) == pytest.approx(sk_log_loss(y, p), rel=1e-9)


def test_auc_of_a_single_class_is_nan() -> None:
    assert np.isnan(roc_auc(np.ones(5), np.arange(5)))
