"""Optional PyTorch integration: layers whose backward takes the DFA projection of the output error.

    dfa = DFA(FeedbackProjection(projector, layer_sizes=[256, 256]))      # or DFA.digital(10, [256, 256], seed=1)
    model = torch.nn.Sequential(
        torch.nn.Linear(784, 256), torch.nn.Tanh(), dfa.hidden_tap(0),
        torch.nn.Linear(256, 256), torch.nn.Tanh(), dfa.hidden_tap(1),
        torch.nn.Linear(256, 10), dfa.output_tap())
    loss = torch.nn.functional.cross_entropy(model(x), y); loss.backward()    # hidden grads now come from DFA

Any module output can be tapped, and the error can be per example or per token:
- the output error is the gradient at the logits, shape (..., n_classes): (batch, n_classes) for a classifier,
  (batch, sequence, vocabulary) for a language model's per-token loss; each vector along the last axis is one
  error, and all of a backward pass's errors go through the projector in one call;
- a tap's output has the logits' leading shape followed by the tap's own axes; the product of those axes is the
  tap's width in ``layer_sizes``. A Transformer block's residual stream (batch, sequence, d_model) tapped under a
  per-token error has width d_model (every token gets B_l of its own error); under a per-example error it has
  width sequence x d_model (each example's error is projected to the whole block output);
- ``DFA.attach(model, blocks=[...], output=...)`` taps named submodules of an existing model with forward hooks,
  without rewriting it, and puts the feedback matrix on the model as a buffer so that ``model.to(device)`` moves
  it.

    dfa = DFA(FeedbackProjection(projector, layer_sizes=[d_model] * n_blocks))
    attachment = dfa.attach(model, blocks=[f"blocks.{i}" for i in range(n_blocks)], output="head")

How it works (custom autograd Functions, identities in the forward pass):
- the output tap sees the gradient at the logits, g = dL/dlogits (for the mean cross-entropy, (softmax - onehot)
  / batch: the output error), projects it once for every hidden layer and passes g on unchanged, so the last
  layer gets its true gradient;
- the hidden tap after layer l's activation drops the gradient backprop brings (W_{l+1}^T delta_{l+1}) and returns
  B_l g instead; autograd then applies f'(a_l) and forms layer l's weight gradient: exactly the DFA update.
The feedback is a digital B held as a registered buffer (it follows ``model.to(device)``; the projection runs on
the gradient's device) when it is known exactly (a digital projector with real errors), else the projector is
called in backward (optical: the error goes to the host as float64 and the result comes back to the gradient's
device and dtype). torch is imported by this module only; ``dfa_client`` itself never imports it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch

from .dfa import FeedbackProjection
from .errors import InvalidInputError

__all__ = ["DFA", "DFAAttachment", "HiddenTap", "OutputTap", "DFAPerceptron"]


# ``ctx`` is torch's per-call context object: these Functions keep their own attributes on it (dfa, pass_id...),
# which no torch type declares, hence ``Any``.
class _OutputFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, dfa: DFA, pass_id: int) -> torch.Tensor:
        ctx.dfa = dfa
        ctx.pass_id = pass_id
        return logits.view_as(logits)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        ctx.dfa._store(ctx.pass_id, grad.shape[:-1], ctx.dfa.project(grad))
        return grad, None, None


class _HiddenFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, dfa: DFA, index: int, pass_id: int) -> torch.Tensor:
        ctx.dfa = dfa
        ctx.index = index
        ctx.pass_id = pass_id
        ctx.shape = h.shape
        return h.view_as(h)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        leading, projected = ctx.dfa._take(ctx.pass_id, ctx.index)
        shape = tuple(ctx.shape)
        if shape[: len(leading)] != tuple(leading) or math.prod(shape[len(leading) :]) != projected.shape[-1]:
            raise RuntimeError(
                f"DFA hidden tap {ctx.index}: its output {shape} does not fit the errors' leading shape "
                f"{tuple(leading)} and its width {projected.shape[-1]} in layer_sizes: check layer_sizes"
            )
        return projected.reshape(shape).to(device=grad.device, dtype=grad.dtype), None, None, None


class DFA(torch.nn.Module):
    """The feedback of one network: its taps share it; one projection per backward pass.

    Args:
        feedback: a FeedbackProjection over the network's hidden widths (input side first).

    Buffers: ``feedback_matrix`` (n_classes x sum of hidden widths, scaled) when the feedback is known exactly,
    else None (the projector is called in backward, on the host).
    """

    feedback_matrix: torch.Tensor | None

    def __init__(self, feedback: FeedbackProjection) -> None:
        super().__init__()
        if not isinstance(feedback, FeedbackProjection):
            raise InvalidInputError(f"feedback must be a FeedbackProjection, got {type(feedback).__name__}")
        self.feedback = feedback
        self.layer_sizes = feedback.layer_sizes
        matrix = feedback.dense_matrix()
        self.register_buffer("feedback_matrix", None if matrix is None else torch.from_numpy(matrix))
        self._owner: torch.nn.Module | None = None  # the model attach() put the matrix on
        self._pass = 0  # forward passes seen by the output tap
        self._projected: tuple[int, torch.Size, list[torch.Tensor]] | None = None

    @classmethod
    def digital(cls, n_classes: int, layer_sizes: Sequence[int], seed: int = 0, scale: str | float = "classes") -> DFA:
        """A seeded digital feedback (the B of ``digital://?seed=seed``), held as a buffer."""
        from .digital import DigitalProjector

        with DigitalProjector(f"digital://?seed={seed}", sum(layer_sizes), n_features=n_classes) as projector:
            return cls(FeedbackProjection(projector, layer_sizes, scale=scale))

    # -- the taps --------------------------------------------------------------------------------------------
    def hidden(self, h: torch.Tensor, index: int) -> torch.Tensor:
        """Identity on hidden layer ``index``'s output; in backward its gradient becomes B_index e."""
        if not 0 <= index < len(self.layer_sizes):
            raise InvalidInputError(f"hidden index {index} outside 0..{len(self.layer_sizes) - 1}")
        if not torch.is_grad_enabled() or not h.requires_grad:
            return h
        return _HiddenFunction.apply(h, self, index, self._pass)

    def output(self, logits: torch.Tensor) -> torch.Tensor:
        """Identity on the logits; in backward it projects their gradient for the hidden taps of this pass."""
        if not torch.is_grad_enabled() or not logits.requires_grad:
            return logits
        out = _OutputFunction.apply(logits, self, self._pass)
        self._pass += 1
        return out

    def hidden_tap(self, index: int) -> HiddenTap:
        return HiddenTap(self, index)

    def output_tap(self) -> OutputTap:
        return OutputTap(self)

    # -- projection ------------------------------------------------------------------------------------------
    def project(self, errors: torch.Tensor) -> list[torch.Tensor]:
        """[B_1 e, ..., B_L e], each (n_errors, width_l), for errors (..., n_classes) taken as n_errors vectors
        along the last axis, in one projection; on the errors' device and in their dtype."""
        errors = errors.detach()
        if errors.ndim < 2:
            raise RuntimeError(
                f"DFA output tap: expected the logits' gradient (..., n_classes), got {tuple(errors.shape)}"
            )
        errors = errors.reshape(-1, errors.shape[-1])
        held = self._matrix()
        if held is not None:
            matrix = held.to(device=errors.device, dtype=errors.dtype)
            projected = errors @ matrix
            return list(torch.split(projected, list(self.layer_sizes), dim=1))
        host = errors.to(device="cpu", dtype=torch.float64).numpy()
        parts = self.feedback(np.ascontiguousarray(host))
        return [torch.from_numpy(np.asarray(p)).to(device=errors.device, dtype=errors.dtype) for p in parts]

    def _store(self, pass_id: int, leading: torch.Size, projected: list[torch.Tensor]) -> None:
        self._projected = (pass_id, leading, projected)

    def _take(self, pass_id: int, index: int) -> tuple[torch.Size, torch.Tensor]:
        if self._projected is None or self._projected[0] != pass_id:
            raise RuntimeError(
                "DFA hidden tap: no output error for this forward pass; the loss must be computed "
                "from the output of this pass's DFA.output (output_tap) before backward"
            )
        return self._projected[1], self._projected[2][index]

    # -- attaching to an existing model ----------------------------------------------------------------------
    def attach(self, model: torch.nn.Module, blocks: Sequence[str], output: str) -> DFAAttachment:
        """Tap the outputs of ``model``'s submodules named in ``blocks`` (hidden tap i for blocks[i]) and of
        ``output`` (the logits) with forward hooks, without changing the model's code.

        The feedback matrix (when held digitally) becomes the model's buffer ``dfa_feedback_matrix``, so that
        ``model.to(device)`` moves it and ``state_dict`` saves it; ``model.dfa`` is this DFA (a plain attribute,
        not a submodule: a ``Sequential`` would call it). Each named module must return one tensor. Returns the
        attachment; its ``remove()`` takes all of it away again.

        Raises:
            InvalidInputError: a name that is not a submodule, a count of blocks other than ``layer_sizes``'s, a
                name used twice, or a model that already has a DFA attached.
        """
        modules = dict(model.named_modules())
        names = [*blocks, output]
        missing = [name for name in names if name not in modules or name == ""]
        if missing:
            raise InvalidInputError(f"no submodule named {missing[0]!r} in the model")
        if len(blocks) != len(self.layer_sizes):
            raise InvalidInputError(f"{len(blocks)} blocks named, the feedback has {len(self.layer_sizes)} taps")
        if len(set(names)) != len(names):
            raise InvalidInputError(f"a module is named twice in blocks and output: {names}")
        if hasattr(model, "dfa") or hasattr(model, _MODEL_BUFFER):
            raise InvalidInputError("the model already has a DFA attached ('dfa' or 'dfa_feedback_matrix')")
        handles = [modules[name].register_forward_hook(_hidden_hook(self, i, name)) for i, name in enumerate(blocks)]
        handles.append(modules[output].register_forward_hook(_output_hook(self, output)))
        if self.feedback_matrix is not None:
            model.register_buffer(_MODEL_BUFFER, self.feedback_matrix)
            self._owner = model
        object.__setattr__(model, "dfa", self)
        return DFAAttachment(self, model, handles)

    def _matrix(self) -> torch.Tensor | None:
        """The digital feedback matrix: the attached model's buffer (moved with it), else this module's."""
        if self._owner is not None:
            return cast(torch.Tensor, getattr(self._owner, _MODEL_BUFFER))
        return self.feedback_matrix


_MODEL_BUFFER = "dfa_feedback_matrix"


class DFAAttachment:
    """What :meth:`DFA.attach` added to a model: the hooks, the buffer and ``model.dfa``; ``remove()`` undoes it."""

    def __init__(self, dfa: DFA, model: torch.nn.Module, handles: list[Any]) -> None:
        self.dfa, self.model, self.handles = dfa, model, handles

    def remove(self) -> None:
        """Take the hooks, the buffer and ``model.dfa`` away (the model trains by backprop again); idempotent."""
        for handle in self.handles:
            handle.remove()
        self.handles = []
        if self.dfa._owner is self.model:
            if _MODEL_BUFFER in self.model._buffers:
                self.dfa.feedback_matrix = self.model._buffers.pop(_MODEL_BUFFER)
            self.dfa._owner = None
        if self.model.__dict__.get("dfa") is self.dfa:
            del self.model.__dict__["dfa"]


def _tensor_output(name: str, out: Any) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise RuntimeError(f"DFA tap on {name!r}: the module returned {type(out).__name__}, not one tensor")
    return out


def _hidden_hook(dfa: DFA, index: int, name: str) -> Any:
    def hook(module: torch.nn.Module, args: Any, out: Any) -> torch.Tensor:
        return dfa.hidden(_tensor_output(name, out), index)

    return hook


def _output_hook(dfa: DFA, name: str) -> Any:
    def hook(module: torch.nn.Module, args: Any, out: Any) -> torch.Tensor:
        return dfa.output(_tensor_output(name, out))

    return hook


class HiddenTap(torch.nn.Module):
    """``DFA.hidden`` as a module, to put after a hidden layer's activation in ``torch.nn.Sequential``."""

    dfa: DFA

    def __init__(self, dfa: DFA, index: int) -> None:
        super().__init__()
        object.__setattr__(self, "dfa", dfa)  # not a submodule: the DFA (and its buffer) belongs to the model once
        self.index = index

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.dfa.hidden(h, self.index)

    def extra_repr(self) -> str:
        return f"index={self.index}"


class OutputTap(torch.nn.Module):
    """``DFA.output`` as a module, to put after the last layer in ``torch.nn.Sequential``."""

    dfa: DFA

    def __init__(self, dfa: DFA) -> None:
        super().__init__()
        object.__setattr__(self, "dfa", dfa)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return self.dfa.output(logits)


class DFAPerceptron(torch.nn.Module):
    """A fully connected network trained by DFA: ``sizes`` = [n_inputs, hidden..., n_classes].

    Owns its ``dfa`` as a submodule, so ``.to(device)`` moves the feedback buffer with the weights.
    """

    _ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid}

    def __init__(self, sizes: Sequence[int], dfa: DFA, activation: str = "tanh") -> None:
        super().__init__()
        if activation not in self._ACTIVATIONS:
            raise InvalidInputError(f"activation={activation!r}; choose one of {sorted(self._ACTIVATIONS)}")
        if tuple(sizes[1:-1]) != tuple(dfa.layer_sizes):
            raise InvalidInputError(
                f"hidden widths {list(sizes[1:-1])} differ from the feedback's {list(dfa.layer_sizes)}"
            )
        self.sizes = tuple(int(s) for s in sizes)
        self.layers = torch.nn.ModuleList(
            torch.nn.Linear(a, b) for a, b in zip(self.sizes[:-1], self.sizes[1:], strict=True)
        )
        self.dfa = dfa
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self._ACTIVATIONS[self.activation]
        for index, layer in enumerate(self.layers[:-1]):
            x = self.dfa.hidden(f(layer(x)), index)
        return self.dfa.output(self.layers[-1](x))

    @torch.no_grad()
    def load_numpy(self, weights: Sequence[npt.ArrayLike], biases: Sequence[npt.ArrayLike]) -> DFAPerceptron:
        """Copy weights (n_in, n_out) and biases from a ``dfa_client.nn.MLP`` (its .weights, .biases)."""
        for module, W, b in zip(self.layers, weights, biases, strict=True):
            layer = cast(torch.nn.Linear, module)
            layer.weight.copy_(torch.as_tensor(np.asarray(W).T, dtype=layer.weight.dtype))
            layer.bias.copy_(torch.as_tensor(np.asarray(b), dtype=layer.bias.dtype))
        return self
