"""Multinomial logistic regression with L2, fit to convergence with L-BFGS, and its strength chosen by CV.

This is the classifier of method 1, trained on frozen pooled features. Features are standardised for
a well-conditioned problem (and so that one grid of strengths suits any featurizer); the scaling is
folded back into the weights, so the result applies to raw features as one ``Dense`` layer.
The objective is the mean cross-entropy plus ``l2 / 2 * ||W||²`` (the bias is not penalised).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .dataset import stratified_folds
from .metrics import log_loss

L2_GRID = tuple(float(v) for v in 10.0 ** np.linspace(-4, 1, 11))
DEFAULT_L2 = 0.01  # used when a class is too small to cross-validate
MAX_ITERATIONS = 5000


@dataclass(frozen=True)
class LogisticModel:
    weights: np.ndarray  # (features, classes), applies to raw features
    bias: np.ndarray  # (classes,)
    l2: float
    iterations: int
    converged: bool

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        return softmax(features.astype(np.float64) @ self.weights + self.bias)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _objective(params: np.ndarray, x: np.ndarray, onehot: np.ndarray, l2: float) -> tuple[float, np.ndarray]:
    features, classes = x.shape[1], onehot.shape[1]
    weights = params[: features * classes].reshape(features, classes)
    bias = params[features * classes :]
    logits = x @ weights + bias
    logits -= logits.max(axis=1, keepdims=True)
    log_normaliser = np.log(np.exp(logits).sum(axis=1, keepdims=True))
    log_probabilities = logits - log_normaliser
    n = len(x)
    loss = -(onehot * log_probabilities).sum() / n + 0.5 * l2 * (weights**2).sum()
    residual = (np.exp(log_probabilities) - onehot) / n
    gradient = np.concatenate([(x.T @ residual + l2 * weights).ravel(), residual.sum(axis=0)])
    return loss, gradient


def fit_logistic(
    features: np.ndarray,
    targets: np.ndarray,
    classes: int,
    l2: float,
    max_iterations: int = MAX_ITERATIONS,
    start: np.ndarray | None = None,
) -> tuple[LogisticModel, np.ndarray]:
    """Fit on ``features`` (n, d) and integer ``targets``; return the model and the solution (for warm starts)."""
    from scipy.optimize import minimize
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # small problems: threads only add overhead, and hurt on a busy machine
        return _fit(minimize, features, targets, classes, l2, max_iterations, start)


def _fit(minimize, features, targets, classes, l2, max_iterations, start) -> tuple[LogisticModel, np.ndarray]:
    x = features.astype(np.float64)
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-8] = 1.0
    x = (x - mean) / scale
    basis = None
    if len(x) < x.shape[1]:
        # Fewer images than features: the optimal weights lie in the span of the images, so solve the
        # same problem in that basis (exactly equivalent, and many times cheaper).
        basis = np.linalg.svd(x, full_matrices=False)[2].T
        x = x @ basis
    onehot = np.eye(classes)[targets]
    d = x.shape[1]
    initial = np.zeros(d * classes + classes) if start is None else start
    result = minimize(
        _objective,
        initial,
        args=(x, onehot, l2),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": max_iterations, "maxfun": 2 * max_iterations, "gtol": 1e-6, "ftol": 1e-12},
    )
    weights = result.x[: d * classes].reshape(d, classes)
    bias = result.x[d * classes :]
    if basis is not None:
        weights = basis @ weights
    raw_weights = weights / scale[:, None]
    raw_bias = bias - mean @ raw_weights
    return LogisticModel(raw_weights, raw_bias, l2, int(result.nit), bool(result.success)), result.x


@dataclass(frozen=True)
class CrossValidation:
    l2: float
    folds: int
    scores: dict[float, float]  # strength → pooled validation log-loss


def choose_l2(
    features: np.ndarray,
    targets: np.ndarray,
    classes: int,
    seed: int,
    grid: tuple[float, ...] = L2_GRID,
    max_folds: int = 5,
) -> CrossValidation:
    """The strength with the lowest validation log-loss in stratified k-fold CV (ties: the stronger).

    With fewer than two images in some class there is nothing to validate on: ``DEFAULT_L2``, zero folds.
    """
    folds = int(min(max_folds, np.bincount(targets, minlength=classes)[np.unique(targets)].min()))
    if folds < 2:
        return CrossValidation(DEFAULT_L2, 0, {})
    splits = stratified_folds(targets, folds, seed)
    scores = {}
    starts: list[np.ndarray | None] = [None] * folds
    for l2 in sorted(grid, reverse=True):  # strong to weak: each fit starts from the previous solution
        probabilities = np.zeros((len(targets), classes))
        for k, validation in enumerate(splits):
            train = np.setdiff1d(np.arange(len(targets)), validation)
            model, starts[k] = fit_logistic(features[train], targets[train], classes, l2, start=starts[k])
            probabilities[validation] = model.probabilities(features[validation])
        scores[l2] = log_loss(probabilities, targets)
    best = min(sorted(scores, reverse=True), key=lambda value: round(scores[value], 10))
    return CrossValidation(best, folds, scores)
