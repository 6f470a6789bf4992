"""PCA as the challenge's task 1 uses it: the organisers' reduction of the items' text and image vectors to
item_emb_d128 (the generator makes the shipped embedding this way) and the embed stage's `pca` method."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PCA_BLOCK = 8_192  # rows centred at once (float64) while the covariance is summed


@dataclass(frozen=True)
class Pca:
    """A fitted PCA: `transform(x)` = ((x - mean) / std) @ components * scale."""

    mean: np.ndarray  # (D,)
    std: np.ndarray  # (D,): the columns' standard deviations (1 where constant), or all 1 if not standardised
    components: np.ndarray  # (D, dim), orthonormal columns by decreasing variance
    explained: np.ndarray  # (dim,) share of the (standardised) variance each component holds
    scale: float  # makes the scores' root mean square 1

    def standardise(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.std).astype(np.float32)

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (self.standardise(x) @ self.components * self.scale).astype(np.float32)


def fit_pca(x: np.ndarray, dim: int, standardise: bool = True) -> Pca:
    """PCA of `x` (N, D), each column standardised first unless `standardise` is False: exact whatever N,
    at D x D memory besides x (the covariance is summed over row blocks in float64)."""
    if x.ndim != 2 or not 1 <= dim <= min(x.shape):
        raise ValueError(f"pca: expected (N, D) features with D, N >= dim = {dim}, found shape {x.shape}")
    mean = x.mean(axis=0, dtype=np.float64)
    scatter = np.zeros((x.shape[1], x.shape[1]))  # of the centred columns, one pass over row blocks
    for start in range(0, len(x), PCA_BLOCK):
        centred = x[start : start + PCA_BLOCK] - mean
        scatter += centred.T @ centred
    return pca_from_scatter(mean, scatter, len(x), dim, standardise)


def pca_from_scatter(mean: np.ndarray, scatter: np.ndarray, n: int, dim: int, standardise: bool) -> Pca:
    """The PCA of N = `n` rows with column means `mean` and centred scatter matrix `scatter` (D, D), from the
    eigenvectors of the covariance. Each component's sign is fixed (its largest entry positive)."""
    std = np.sqrt(np.diag(scatter) / n) if standardise else np.ones(len(mean))
    std[std == 0] = 1.0
    cov = scatter / np.outer(std, std) / max(n - 1, 1)
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1][:dim]
    values, vectors = np.clip(values[order], 0, None), vectors[:, order]
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(dim)])
    vectors = vectors * np.where(signs == 0, 1, signs)
    total = float(np.trace(cov)) or 1.0
    rms = float(np.sqrt(values.sum() / dim * (n - 1) / n)) or 1.0  # the scores' root mean square
    return Pca(mean, std, vectors, values / total, 1.0 / rms)
