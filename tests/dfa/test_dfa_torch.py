"""The optional PyTorch integration (dfa_client.torch_dfa): DFA layers through custom autograd Functions, on CPU."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (the optional torch extra: pip install torch)")

import dfa_client  # noqa: E402 - after the skip: the module needs torch
from dfa_client.dfa import FeedbackProjection  # noqa: E402
from dfa_client.nn import MLP  # noqa: E402
from dfa_client.torch_dfa import DFA, DFAPerceptron  # noqa: E402
from tests.support import small_sim  # noqa: E402

SIM = small_sim("exposure_us=200&seed=3")


def _batch(seed: int = 0, n: int = 16, n_in: int = 20, n_classes: int = 5):
    rng = np.random.default_rng(seed)
    return rng.random((n, n_in)).astype(np.float32), rng.integers(0, n_classes, n)


def _torch_grads(model, X, y):
    model.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(X)), torch.from_numpy(y))
    loss.backward()
    return [(layer.weight.grad.numpy().T.copy(), layer.bias.grad.numpy().copy()) for layer in model.layers]


@pytest.mark.parametrize("encoding", ["real", "ternary"])
def test_torch_dfa_gradients_match_the_numpy_dfa_update_for_the_same_feedback(encoding):
    """Same weights, batch and feedback: the same update, hidden layers from DFA and the last from backprop.

    Both compute in float32 from the same float32 inputs and a float64 projection; they differ only by the order
    of float32 sums: relative 1e-5 is ~100 ulp of the largest entry.
    """
    X, y = _batch()
    net = MLP([20, 12, 8, 5], seed=1)
    with dfa_client.connect("digital://?seed=4", n_components=20, n_features=5) as projector:
        feedback = FeedbackProjection(projector, [12, 8], encoding=encoding)
        expected = net.dfa_gradients(X, y, feedback)
        true = net.backprop_gradients(X, y)
        dfa = DFA(feedback)
        # real errors through a digital projector: B is known, held as a buffer; ternary: projector in backward
        assert (dfa.feedback_matrix is not None) == (encoding == "real")
        model = DFAPerceptron(net.sizes, dfa).load_numpy(net.weights, net.biases)
        got = _torch_grads(model, X, y)
    for layer, ((weight, bias), want) in enumerate(zip(got, expected, strict=True)):
        scale = np.abs(want.weight).max()
        np.testing.assert_allclose(weight, want.weight, rtol=0, atol=1e-5 * scale, err_msg=f"layer {layer}")
        np.testing.assert_allclose(bias, want.bias, rtol=0, atol=1e-5 * np.abs(want.bias).max() + 1e-9)
    np.testing.assert_allclose(got[-1][0], true[-1].weight, rtol=0, atol=1e-5 * np.abs(true[-1].weight).max())
    assert not np.allclose(got[0][0], true[0].weight, atol=1e-3 * np.abs(true[0].weight).max())


def test_the_feedback_matrix_is_a_registered_buffer_and_follows_the_module():
    dfa = DFA.digital(n_classes=5, layer_sizes=[12, 8], seed=4)
    model = DFAPerceptron([20, 12, 8, 5], dfa)
    assert "dfa.feedback_matrix" in model.state_dict()
    with dfa_client.connect("digital://?seed=4", n_components=20, n_features=5) as projector:
        np.testing.assert_allclose(dfa.feedback_matrix.numpy(), projector.matrix / np.sqrt(5), rtol=1e-6)
    model = model.to(torch.float64)  # buffers follow .to(); gradients keep the parameters' dtype and device
    assert dfa.feedback_matrix.dtype == torch.float64
    X, y = _batch()
    loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(X).double()), torch.from_numpy(y))
    loss.backward()
    for layer in model.layers:
        assert layer.weight.grad.dtype == torch.float64 and layer.weight.grad.device == layer.weight.device
        assert torch.isfinite(layer.weight.grad).all()


def test_torch_dfa_trains_on_digits():
    """A 64-64-64-10 tanh network, DFA with a digital buffer, 3 epochs of SGD on the 8x8 digits.

    The numpy twin reaches 92-94 % after 5 epochs (tests/dfa/test_dfa_training.py); the loss starts at ln 10 = 2.3.
    Bounds: the loss falls below half its first-epoch value and accuracy exceeds 80 % (chance: 10 %).
    """
    pytest.importorskip("sklearn")
    from dfa_client.data import load_digits

    data = load_digits(seed=0)
    torch.manual_seed(0)
    model = DFAPerceptron([64, 64, 64, 10], DFA.digital(10, [64, 64], seed=0))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    X, y = torch.from_numpy(data.X_train), torch.from_numpy(data.y_train)
    generator = torch.Generator().manual_seed(0)
    epoch_losses = []
    for _ in range(3):
        order = torch.randperm(len(y), generator=generator)
        total = 0.0
        for start in range(0, len(y), 32):
            batch = order[start : start + 32]
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(X[batch]), y[batch])
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
        epoch_losses.append(total / len(y))
    with torch.no_grad():
        accuracy = float(
            (model(torch.from_numpy(data.X_test)).argmax(1) == torch.from_numpy(data.y_test)).float().mean()
        )
    assert epoch_losses[-1] < 0.5 * epoch_losses[0], epoch_losses
    assert accuracy > 0.8


def test_optical_feedback_is_called_in_backward_with_one_projection_per_batch():
    X, y = _batch(n_classes=10)
    with dfa_client.connect(SIM, n_components=20, n_features=10, pixel_format="MONO12") as projector:
        feedback = FeedbackProjection(projector, [12, 8], encoding="ternary")
        dfa = DFA(feedback)
        assert dfa.feedback_matrix is None
        net = MLP([20, 12, 8, 10], seed=2)
        model = DFAPerceptron(net.sizes, dfa).load_numpy(net.weights, net.biases)
        with torch.no_grad():
            model(torch.from_numpy(X))  # no backward, no projection
        assert projector.vectors_projected == 0
        got = _torch_grads(model, X, y)
        # 16 codes plus the all-ones vector that centres them, in one call
        assert projector.vectors_projected == 17
        assert all(np.isfinite(w).all() and np.abs(w).max() > 0 for w, _ in got)


def test_hidden_taps_refuse_a_backward_without_this_pass_output_error():
    dfa = DFA.digital(n_classes=3, layer_sizes=[4], seed=0)
    layer = torch.nn.Linear(2, 4)
    h = dfa.hidden(torch.tanh(layer(torch.ones(1, 2))), 0)
    with pytest.raises(RuntimeError, match="no output error"):
        h.sum().backward()
    with pytest.raises(dfa_client.InvalidInputError):
        dfa.hidden(h, 1)
    with pytest.raises(dfa_client.InvalidInputError):
        DFAPerceptron([2, 5, 3], dfa)  # hidden widths differ from the feedback's
