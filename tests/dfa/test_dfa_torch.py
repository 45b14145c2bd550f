"""The optional PyTorch integration (dfa_client.torch_dfa): DFA layers through custom autograd Functions, on CPU.

Without PyTorch this file is skipped; with OPU_REQUIRE_TORCH=1 (as CI sets it) a missing PyTorch fails it instead.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

try:
    import torch
except ImportError:
    if os.environ.get("OPU_REQUIRE_TORCH"):  # CI installs PyTorch: there these tests must run
        raise
    pytest.skip("PyTorch is not installed (the optional torch extra: pip install torch)", allow_module_level=True)

import dfa_client
from dfa_client.dfa import FeedbackProjection
from dfa_client.nn import MLP
from dfa_client.torch_dfa import DFA, DFAPerceptron
from tests.support import small_sim

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


# ------------------------------------------------------------------------------ taps on any module output
def _per_token_model(net: MLP) -> torch.nn.Sequential:
    """``net`` applied to every token of (batch, sequence, n_in): Linear layers act on the last axis."""
    modules: list[torch.nn.Module] = []
    for W, b in zip(net.weights, net.biases, strict=True):
        layer = torch.nn.Linear(W.shape[0], W.shape[1])
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(np.asarray(W, dtype=np.float32).T))
            layer.bias.copy_(torch.from_numpy(np.asarray(b, dtype=np.float32)))
        modules += [layer, torch.nn.Tanh()]
    return torch.nn.Sequential(*modules[:-1])  # no activation after the logits


@pytest.mark.parametrize("encoding", ["real", "ternary"])
def test_per_token_errors_through_hooks_give_the_numpy_update_of_every_token(encoding):
    """A per-token loss on (batch, sequence, n_classes) logits, DFA attached to an unchanged model by names: each
    token is one error vector, and the update is the numpy DFA update of the tokens taken as a batch (same float32
    sums in another order: 1e-5 relative, as above)."""
    batch, sequence, n_in, n_classes = 4, 6, 20, 5
    rng = np.random.default_rng(3)
    X = rng.random((batch, sequence, n_in)).astype(np.float32)
    y = rng.integers(0, n_classes, (batch, sequence))
    net = MLP([n_in, 12, 8, n_classes], seed=1)
    model = _per_token_model(net)
    with dfa_client.connect("digital://?seed=4", n_components=20, n_features=n_classes) as projector:
        feedback = FeedbackProjection(projector, [12, 8], encoding=encoding)
        expected = net.dfa_gradients(X.reshape(-1, n_in), y.reshape(-1), feedback)
        dfa = DFA(feedback)
        attachment = dfa.attach(model, blocks=["1", "3"], output="4")
        assert model.dfa is dfa and "dfa" not in dict(model.named_children())
        logits = model(torch.from_numpy(X))
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, n_classes), torch.from_numpy(y).reshape(-1))
        loss.backward()
    for layer, want in zip([model[0], model[2], model[4]], expected, strict=True):
        got = layer.weight.grad.numpy().T
        np.testing.assert_allclose(got, want.weight, rtol=0, atol=1e-5 * np.abs(want.weight).max())
        np.testing.assert_allclose(layer.bias.grad.numpy(), want.bias, rtol=0, atol=1e-5 * np.abs(want.bias).max())
    attachment.remove()  # detached: plain backprop again
    assert not hasattr(model, "dfa") and "dfa_feedback_matrix" not in model.state_dict()
    model.zero_grad()
    true = net.backprop_gradients(X.reshape(-1, n_in), y.reshape(-1))
    logits = model(torch.from_numpy(X))
    torch.nn.functional.cross_entropy(logits.reshape(-1, n_classes), torch.from_numpy(y).reshape(-1)).backward()
    np.testing.assert_allclose(
        model[0].weight.grad.numpy().T, true[0].weight, rtol=0, atol=1e-5 * np.abs(true[0].weight).max()
    )


def test_a_per_example_error_feeds_a_whole_sequence_tap():
    """Logits (batch, n_classes) and a tap of shape (batch, sequence, d): its width is sequence x d, and its
    gradient is B e reshaped, so the first layer's update is the sum over tokens of x^T ((B e) * tanh')."""
    batch, sequence, n_in, d, n_classes = 5, 3, 7, 4, 6
    rng = np.random.default_rng(4)
    X = rng.standard_normal((batch, sequence, n_in)).astype(np.float32)
    y = rng.integers(0, n_classes, batch)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(n_in, d), torch.nn.Tanh(), torch.nn.Flatten(), torch.nn.Linear(sequence * d, n_classes)
    )
    dfa = DFA.digital(n_classes, [sequence * d], seed=2)
    dfa.attach(model, blocks=["1"], output="3")
    x = torch.from_numpy(X)
    torch.nn.functional.cross_entropy(model(x), torch.from_numpy(y)).backward()
    with torch.no_grad():
        h = torch.tanh(model[0](x)).numpy()
        logits = model(x).numpy()
    p = np.exp(logits - logits.max(1, keepdims=True))
    e = p / p.sum(1, keepdims=True) - np.eye(n_classes)[y]
    e /= batch  # the gradient of the mean cross-entropy at the logits
    projected = (e @ dfa.feedback_matrix.numpy()).reshape(batch, sequence, d)
    delta = projected * (1 - h**2)
    want = np.einsum("bsi,bsj->ij", X, delta)
    np.testing.assert_allclose(model[0].weight.grad.numpy().T, want, rtol=1e-5, atol=1e-7)


def test_attach_refuses_bad_names_and_counts_and_a_tap_of_the_wrong_width():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    dfa = DFA.digital(2, [4], seed=0)
    with pytest.raises(dfa_client.InvalidInputError, match="no submodule"):
        dfa.attach(model, blocks=["7"], output="2")
    with pytest.raises(dfa_client.InvalidInputError, match="1 taps"):
        dfa.attach(model, blocks=["0", "1"], output="2")
    with pytest.raises(dfa_client.InvalidInputError, match="twice"):
        dfa.attach(model, blocks=["2"], output="2")
    assert not hasattr(model, "dfa")  # nothing attached by a refused call
    wrong = DFA.digital(2, [5], seed=0)
    wrong.attach(model, blocks=["1"], output="2")
    loss = model(torch.ones(3, 3)).sum()
    with pytest.raises(RuntimeError, match="does not fit"):
        loss.backward()
    with pytest.raises(dfa_client.InvalidInputError, match="already has a DFA"):
        dfa.attach(model, blocks=["1"], output="2")


def test_an_attached_feedback_follows_the_model():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    DFA.digital(2, [4], seed=0).attach(model, blocks=["1"], output="2")
    assert "dfa_feedback_matrix" in model.state_dict()
    model = model.to(torch.float64)
    assert model.dfa_feedback_matrix.dtype == torch.float64
    model(torch.ones(2, 3, dtype=torch.float64)).sum().backward()
    assert model[0].weight.grad.dtype == torch.float64 and torch.isfinite(model[0].weight.grad).all()
