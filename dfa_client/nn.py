"""A small numpy multilayer perceptron trained by backprop or by direct feedback alignment (DFA).

    net = MLP([784, 256, 256, 10], activation="tanh", seed=0)
    with dfa_client.connect("digital://?seed=1", n_components=512, n_features=10) as projector:
        feedback = FeedbackProjection(projector, net.hidden_sizes)
        history = net.fit(X, y, method="dfa", feedback=feedback, settings=TrainSettings(epochs=10))

The output is a softmax with the mean cross-entropy loss, so the output error of a sample is e = softmax - onehot.
Backprop's hidden deltas are (W_{l+1}^T delta_{l+1}) * f'(a_l); DFA's are (B_l e) * f'(a_l), where
[B_1 e, ..., B_L e] comes from a feedback callable (a ``FeedbackProjection``, or any function of e returning one
array per hidden layer). The last layer always learns from its true gradient. Hooks: ``fit`` calls every callback
with an ``EpochLog`` after each epoch; ``alignment`` measures the angle between the DFA and backprop updates.
It is meant for examples and tests: plain numpy, no autodiff, SGD with momentum.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .dfa import alignment_angle
from .errors import InvalidInputError

__all__ = ["MLP", "LayerGradients", "TrainSettings", "EpochLog", "Sgd", "ACTIVATIONS", "METHODS", "Feedback"]

_log = logging.getLogger(__name__)

METHODS = ("backprop", "dfa")

FloatArray = npt.NDArray[np.floating[Any]]
"""Weights, activations and gradients, in the network's dtype (float32 by default)."""
LabelArray = npt.NDArray[np.int64]
"""Class labels (batch,), checked to lie within 0..n_classes - 1."""
ErrorArray = npt.NDArray[np.float64]
"""Output errors e = softmax - onehot (batch, n_classes), always float64."""

Feedback = Callable[[ErrorArray], Sequence[npt.NDArray[Any]]]
"""e (batch, n_classes) -> one projected error (batch, width) per hidden layer."""
Activation = Callable[[FloatArray], FloatArray]
"""f(a): the hidden activation of the pre-activation a."""
ActivationSlope = Callable[[FloatArray, FloatArray], FloatArray]
"""f'(a) as a function of the pre-activation a and the output h = f(a)."""


def _tanh(a: FloatArray) -> FloatArray:
    return np.tanh(a)


def _tanh_slope(a: FloatArray, h: FloatArray) -> FloatArray:
    return 1.0 - h * h


def _relu(a: FloatArray) -> FloatArray:
    return np.maximum(a, 0)


def _relu_slope(a: FloatArray, h: FloatArray) -> FloatArray:
    return (a > 0).astype(a.dtype)


def _sigmoid(a: FloatArray) -> FloatArray:
    return 0.5 * (1.0 + np.tanh(0.5 * a))  # overflow-free logistic


def _sigmoid_slope(a: FloatArray, h: FloatArray) -> FloatArray:
    return h * (1.0 - h)


ACTIVATIONS: dict[str, tuple[Activation, ActivationSlope]] = {
    "tanh": (_tanh, _tanh_slope),
    "relu": (_relu, _relu_slope),
    "sigmoid": (_sigmoid, _sigmoid_slope),
}
"""name -> (f, f' as a function of the pre-activation a and the output h = f(a))."""


@dataclass
class LayerGradients:
    """The gradient (or DFA update direction) of one layer's weight (n_in, n_out) and bias (n_out,)."""

    weight: FloatArray
    bias: FloatArray


@dataclass(frozen=True)
class TrainSettings:
    """How ``MLP.fit`` trains.

    Attributes:
        epochs: passes over the training set.
        batch_size: samples per update (and per projector call for DFA).
        learning_rate: SGD step.
        momentum: SGD momentum (0 for plain SGD).
        seed: seed of the shuffling.
    """

    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 0.01
    momentum: float = 0.9
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise InvalidInputError(f"{name} must be a positive integer, got {value!r}")
        if not (isinstance(self.learning_rate, (int, float)) and 0 < self.learning_rate < np.inf):
            raise InvalidInputError(f"learning_rate must be a finite number > 0, got {self.learning_rate!r}")
        if not (isinstance(self.momentum, (int, float)) and 0 <= self.momentum < 1):
            raise InvalidInputError(f"momentum must be within [0, 1), got {self.momentum!r}")


@dataclass(frozen=True)
class EpochLog:
    """What one epoch of ``MLP.fit`` did.

    Attributes:
        epoch: 1 for the first epoch.
        method: "backprop" or "dfa".
        train_loss: mean cross-entropy over the epoch's batches (before each update).
        train_accuracy: accuracy over the epoch's batches (before each update).
        test_accuracy: accuracy on the test set after the epoch (None without one).
        wall_s: seconds since fit started.
    """

    epoch: int
    method: str
    train_loss: float
    train_accuracy: float
    test_accuracy: float | None
    wall_s: float


@dataclass
class _Cache:
    """What a forward pass keeps for the backward one: inputs of each layer, hidden pre-activations, logits."""

    inputs: list[FloatArray]  # inputs[l] feeds layer l (inputs[0] = X)
    pre: list[FloatArray]  # pre-activations of the hidden layers
    logits: FloatArray


_UpdateRule = Callable[[_Cache, ErrorArray], list[LayerGradients]]
"""(forward cache, output error) -> one update per layer: how ``fit`` turns a batch into a step."""


class Sgd:
    """SGD with momentum: v <- momentum v + g; w <- w - learning_rate v."""

    def __init__(self, learning_rate: float, momentum: float = 0.9) -> None:
        self.learning_rate = float(learning_rate)
        self.momentum = float(momentum)
        self._velocity: list[LayerGradients] | None = None

    def step(self, net: MLP, grads: Sequence[LayerGradients]) -> None:
        if self._velocity is None:
            self._velocity = [LayerGradients(np.zeros_like(g.weight), np.zeros_like(g.bias)) for g in grads]
        for layer, (v, g) in enumerate(zip(self._velocity, grads, strict=True)):
            v.weight *= self.momentum
            v.weight += g.weight
            v.bias *= self.momentum
            v.bias += g.bias
            net.weights[layer] -= (self.learning_rate * v.weight).astype(net.dtype)
            net.biases[layer] -= (self.learning_rate * v.bias).astype(net.dtype)


class MLP:
    """A fully connected network: ``sizes`` = [n_inputs, hidden..., n_classes], softmax cross-entropy output.

    Weights start as N(0, 1/fan_in) (LeCun; for relu, 2/fan_in), biases at 0, from ``numpy.random.default_rng(seed)``,
    so two networks with the same sizes and seed start identical (methods are compared from the same start).

    Raises:
        InvalidInputError: fewer than 2 sizes, a size < 1, an unknown activation.
    """

    def __init__(
        self, sizes: Sequence[int], activation: str = "tanh", seed: int = 0, dtype: npt.DTypeLike = np.float32
    ) -> None:
        if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence) or len(sizes) < 2:
            raise InvalidInputError(f"sizes must list at least the inputs and the classes, got {sizes!r}")
        for size in sizes:
            if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
                raise InvalidInputError(f"every size must be a positive integer, got {sizes!r}")
        if activation not in ACTIVATIONS:
            raise InvalidInputError(f"activation={activation!r}; choose one of {sorted(ACTIVATIONS)}")
        self.sizes = tuple(int(s) for s in sizes)
        self.activation = activation
        self.dtype = np.dtype(dtype)
        self.seed = seed
        self._f, self._slope = ACTIVATIONS[activation]
        rng = np.random.default_rng(seed)
        gain = 2.0 if activation == "relu" else 1.0
        self.weights: list[FloatArray] = [
            (rng.standard_normal((n_in, n_out)) * np.sqrt(gain / n_in)).astype(self.dtype)
            for n_in, n_out in zip(self.sizes[:-1], self.sizes[1:], strict=True)
        ]
        self.biases: list[FloatArray] = [np.zeros(n_out, dtype=self.dtype) for n_out in self.sizes[1:]]

    @property
    def hidden_sizes(self) -> tuple[int, ...]:
        """Widths of the hidden layers (what a FeedbackProjection needs)."""
        return self.sizes[1:-1]

    @property
    def n_classes(self) -> int:
        return self.sizes[-1]

    # -- forward ---------------------------------------------------------------------------------------------
    def _check_features(self, X: npt.ArrayLike) -> FloatArray:
        """X as a finite (batch, n_inputs) array of the network's dtype."""
        features = np.asarray(X)
        if features.ndim != 2 or features.shape[1] != self.sizes[0] or features.dtype.kind not in "biuf":
            raise InvalidInputError(f"X must be real (batch, {self.sizes[0]}), got {features.dtype} {features.shape}")
        features = features.astype(self.dtype, copy=False)
        if not np.isfinite(features).all():
            raise InvalidInputError("X contains NaN or Inf")
        return features

    def _check_labels(self, y: npt.ArrayLike, n_samples: int) -> LabelArray:
        """y as n_samples int64 labels within 0..n_classes - 1."""
        labels = np.asarray(y)
        if (
            labels.shape != (n_samples,)
            or labels.dtype.kind not in "iu"
            or (labels.size and (labels.min() < 0 or labels.max() >= self.n_classes))
        ):
            raise InvalidInputError(f"y must be {n_samples} integer labels within 0..{self.n_classes - 1}")
        return labels.astype(np.int64)

    def _check_inputs(self, X: npt.ArrayLike, y: npt.ArrayLike) -> tuple[FloatArray, LabelArray]:
        """Checked inputs and their labels (X first: its errors are reported before y's)."""
        features = self._check_features(X)
        return features, self._check_labels(y, features.shape[0])

    def _forward(self, X: FloatArray) -> _Cache:
        inputs: list[FloatArray] = [X]
        pre: list[FloatArray] = []
        h = X
        for W, b in zip(self.weights[:-1], self.biases[:-1], strict=True):
            a = h @ W + b
            h = self._f(a)
            pre.append(a)
            inputs.append(h)
        return _Cache(inputs, pre, h @ self.weights[-1] + self.biases[-1])

    def forward(self, X: npt.ArrayLike) -> FloatArray:
        """Logits (batch, n_classes) of inputs (batch, n_inputs)."""
        return self._forward(self._check_features(X)).logits

    def predict(self, X: npt.ArrayLike) -> npt.NDArray[np.intp]:
        """Predicted labels (batch,)."""
        return self.forward(X).argmax(axis=1)

    def accuracy(self, X: npt.ArrayLike, y: npt.ArrayLike) -> float:
        """Share of correctly classified samples."""
        features, labels = self._check_inputs(X, y)
        return self._accuracy(self._forward(features).logits, labels)

    @staticmethod
    def _accuracy(logits: FloatArray, labels: LabelArray) -> float:
        return float((logits.argmax(axis=1) == labels).mean())

    @staticmethod
    def _softmax(logits: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        z = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    def loss(self, X: npt.ArrayLike, y: npt.ArrayLike) -> float:
        """Mean cross-entropy."""
        features, labels = self._check_inputs(X, y)
        return self._loss(self._forward(features).logits, labels)

    def _loss(self, logits: FloatArray, y: LabelArray) -> float:
        z = logits - logits.max(axis=1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-log_p[np.arange(len(y)), y].mean())

    def output_error(self, logits: FloatArray, y: LabelArray) -> ErrorArray:
        """e = softmax(logits) - onehot(y) (batch, n_classes): the gradient of each sample's loss at the logits."""
        e = self._softmax(logits.astype(np.float64))
        e[np.arange(len(y)), y] -= 1.0
        return e

    # -- gradients -------------------------------------------------------------------------------------------
    def _layer_grad(self, layer_input: FloatArray, delta: FloatArray) -> LayerGradients:
        n = layer_input.shape[0]
        return LayerGradients((layer_input.T @ delta) / n, delta.sum(axis=0) / n)

    def _backprop(self, cache: _Cache, e: ErrorArray) -> list[LayerGradients]:
        delta: FloatArray = e.astype(self.dtype)
        grads = [self._layer_grad(cache.inputs[-1], delta)]
        for layer in range(len(self.weights) - 2, -1, -1):
            a, h = cache.pre[layer], cache.inputs[layer + 1]
            delta = (delta @ self.weights[layer + 1].T) * self._slope(a, h)
            grads.append(self._layer_grad(cache.inputs[layer], delta))
        return grads[::-1]

    def dfa_from_projection(
        self, cache: _Cache, e: ErrorArray, projected: Sequence[npt.ArrayLike]
    ) -> list[LayerGradients]:
        """DFA updates from a forward cache, the output error and one projected error per hidden layer."""
        hidden = self.hidden_sizes
        if len(projected) != len(hidden):
            raise InvalidInputError(f"{len(projected)} projected errors for {len(hidden)} hidden layers")
        grads = []
        for layer, (width, projection) in enumerate(zip(hidden, projected, strict=True)):
            p = np.asarray(projection)
            if p.shape != (e.shape[0], width):
                raise InvalidInputError(f"projected error {layer} has shape {p.shape}; expected {(e.shape[0], width)}")
            a, h = cache.pre[layer], cache.inputs[layer + 1]
            delta = p.astype(self.dtype) * self._slope(a, h)
            grads.append(self._layer_grad(cache.inputs[layer], delta))
        grads.append(self._layer_grad(cache.inputs[-1], e.astype(self.dtype)))
        return grads

    def backprop_gradients(self, X: npt.ArrayLike, y: npt.ArrayLike) -> list[LayerGradients]:
        """True gradients of the mean cross-entropy, one per layer (input side first)."""
        features, labels = self._check_inputs(X, y)
        cache = self._forward(features)
        return self._backprop(cache, self.output_error(cache.logits, labels))

    def dfa_gradients(self, X: npt.ArrayLike, y: npt.ArrayLike, feedback: Feedback) -> list[LayerGradients]:
        """DFA update directions: hidden layers from feedback(e), the last layer from its true gradient."""
        features, labels = self._check_inputs(X, y)
        cache = self._forward(features)
        e = self.output_error(cache.logits, labels)
        return self.dfa_from_projection(cache, e, feedback(e))

    def alignment(self, X: npt.ArrayLike, y: npt.ArrayLike, feedback: Feedback) -> list[float]:
        """Angle (degrees) between each hidden layer's DFA weight update and its backprop gradient on (X, y).

        Under 90 degrees the DFA update descends the true loss; DFA works because the forward weights come to
        align with the feedback, so these angles fall during training (they start near 90).
        """
        features, labels = self._check_inputs(X, y)
        cache = self._forward(features)
        e = self.output_error(cache.logits, labels)
        true = self._backprop(cache, e)
        dfa = self.dfa_from_projection(cache, e, feedback(e))
        return [alignment_angle(d.weight, t.weight) for d, t in zip(dfa[:-1], true[:-1], strict=True)]

    # -- training --------------------------------------------------------------------------------------------
    def backprop_step(self, X: npt.ArrayLike, y: npt.ArrayLike, optimizer: Sgd) -> float:
        """One backprop update on a batch; returns the batch's loss before it."""
        features, labels = self._check_inputs(X, y)
        cache = self._forward(features)
        optimizer.step(self, self._backprop(cache, self.output_error(cache.logits, labels)))
        return self._loss(cache.logits, labels)

    def dfa_step(self, X: npt.ArrayLike, y: npt.ArrayLike, feedback: Feedback, optimizer: Sgd) -> float:
        """One DFA update on a batch (feedback(e) gives the projected error per hidden layer); returns the loss."""
        features, labels = self._check_inputs(X, y)
        cache = self._forward(features)
        e = self.output_error(cache.logits, labels)
        optimizer.step(self, self.dfa_from_projection(cache, e, feedback(e)))
        return self._loss(cache.logits, labels)

    def _update_rule(self, method: str, feedback: Feedback | None) -> _UpdateRule:
        """How ``fit`` computes a batch's updates under ``method`` (already checked to be one of METHODS)."""
        if method == "backprop":
            return self._backprop
        if feedback is None:
            raise InvalidInputError("DFA training needs a feedback (e.g. a FeedbackProjection)")

        def dfa_update(cache: _Cache, e: ErrorArray) -> list[LayerGradients]:
            return self.dfa_from_projection(cache, e, feedback(e))

        return dfa_update

    def _check_test_set(
        self, X_test: npt.ArrayLike | None, y_test: npt.ArrayLike | None
    ) -> tuple[FloatArray, LabelArray] | None:
        """The checked test set of ``fit``, or None without one."""
        if X_test is None and y_test is None:
            return None
        if X_test is None or y_test is None:
            raise InvalidInputError("give both X_test and y_test, or neither")
        return self._check_inputs(X_test, y_test)

    def _train_epoch(
        self,
        features: FloatArray,
        labels: LabelArray,
        order: npt.NDArray[np.intp],
        batch_size: int,
        update: _UpdateRule,
        optimizer: Sgd,
    ) -> tuple[float, float]:
        """One pass over the training set in ``order``; returns its mean loss and accuracy (before each update)."""
        losses: list[float] = []
        correct = 0
        for first in range(0, len(labels), batch_size):
            batch = order[first : first + batch_size]
            cache = self._forward(features[batch])
            optimizer.step(self, update(cache, self.output_error(cache.logits, labels[batch])))
            losses.append(self._loss(cache.logits, labels[batch]) * len(batch))
            correct += int((cache.logits.argmax(axis=1) == labels[batch]).sum())
        return float(sum(losses) / len(labels)), correct / len(labels)

    def fit(
        self,
        X: npt.ArrayLike,
        y: npt.ArrayLike,
        method: str = "backprop",
        feedback: Feedback | None = None,
        settings: TrainSettings | None = None,
        X_test: npt.ArrayLike | None = None,
        y_test: npt.ArrayLike | None = None,
        callbacks: Sequence[Callable[[EpochLog], object]] = (),
    ) -> list[EpochLog]:
        """Train by ``method`` ("backprop" or "dfa", which needs ``feedback``); returns one EpochLog per epoch.

        Each callback is called with the EpochLog after every epoch (hooks: logging, plotting, alignment,
        early stopping by returning True: training stops once every callback has seen that epoch).
        """
        settings = settings or TrainSettings()
        if method not in METHODS:
            raise InvalidInputError(f"method={method!r}; choose one of {METHODS}")
        update = self._update_rule(method, feedback)
        features, labels = self._check_inputs(X, y)
        test = self._check_test_set(X_test, y_test)
        optimizer = Sgd(settings.learning_rate, settings.momentum)
        rng = np.random.default_rng(settings.seed)
        history: list[EpochLog] = []
        start = time.perf_counter()
        for epoch in range(1, settings.epochs + 1):
            order = rng.permutation(len(labels))
            train_loss, train_accuracy = self._train_epoch(
                features, labels, order, settings.batch_size, update, optimizer
            )
            test_accuracy = None if test is None else self._accuracy(self._forward(test[0]).logits, test[1])
            log = EpochLog(epoch, method, train_loss, train_accuracy, test_accuracy, time.perf_counter() - start)
            history.append(log)
            _log.debug("epoch %d: %s", epoch, log)
            if not np.isfinite(log.train_loss):
                _log.warning("the loss diverged at epoch %d: lower the learning rate", epoch)
                break
            # Every callback sees every epoch, also after an earlier one asked to stop.
            stop = [callback(log) is True for callback in callbacks]
            if any(stop):
                break
        return history
