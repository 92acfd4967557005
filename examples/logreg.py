"""What both examples share: a synthetic binary classification task split over three
participants, and a numpy logistic regression trained by full-batch gradient descent.

A model is a dict of named arrays, ``{"w": (FEATURES,), "b": ()}``, the form fhenode
aggregates (and Flower's ArrayRecord holds) as is.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np

FEATURES = 10
#: Examples held by each participant: unequal, so the weighted mean differs from the mean.
SIZES = (300, 500, 900)
TEST_SIZE = 1000
EPOCHS, LR = 5, 0.5

Model = Dict[str, np.ndarray]
Data = Tuple[np.ndarray, np.ndarray]


def make_data(seed: int = 0) -> Tuple[List[Data], Data]:
    """Each participant's (x, y), and a held-out test set, from one fixed linear rule plus
    label noise; each participant's features are shifted differently (non-IID)."""
    rng = np.random.default_rng(seed)
    truth = rng.normal(size=FEATURES)

    def sample(n: int, shift: float) -> Data:
        x = rng.normal(loc=shift, size=(n, FEATURES))
        y = (x @ truth + rng.normal(scale=1.0, size=n) > 0).astype(np.float64)
        return x, y

    parts = [sample(n, shift) for n, shift in zip(SIZES, (-0.3, 0.0, 0.3))]
    return parts, sample(TEST_SIZE, 0.0)


def initial_model() -> Model:
    return {"w": np.zeros(FEATURES), "b": np.asarray(0.0)}


def train(model: Model, data: Data) -> Model:
    """EPOCHS steps of full-batch gradient descent on the logistic loss, from ``model``."""
    x, y = data
    w, b = model["w"].astype(np.float64).copy(), float(model["b"])
    for _ in range(EPOCHS):
        p = 1.0 / (1.0 + np.exp(-(x @ w + b)))
        w -= LR * x.T @ (p - y) / len(y)
        b -= LR * float(np.mean(p - y))
    return {"w": w, "b": np.asarray(b)}


def accuracy(model: Model, data: Data) -> float:
    x, y = data
    return float(np.mean(((x @ model["w"] + float(model["b"])) > 0) == (y > 0.5)))
