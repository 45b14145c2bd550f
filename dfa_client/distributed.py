"""Data-parallel DFA training with ``torch.distributed``: several trainer processes, one OPU.

Each process holds a replica of the network, trains on its shard of every batch and projects its own output errors
through the OPU service (``tcp://host:port``), which coalesces the processes' requests into shared device calls.

    dist.init_process_group("gloo", init_method=..., rank=rank, world_size=world_size)
    projector = dfa_client.connect("tcp://opu-host:5000", n_components=sum(hidden), n_features=n_classes)
    dfa = DFA(FeedbackProjection(projector, hidden, encoding="ternary"))
    model = DFAPerceptron([n_in, *hidden, n_classes], dfa)    # or dfa.attach(model, blocks, output)
    check_same_feedback(dfa)                                  # every process: the same device, matrix and options
    ddp = DistributedDataParallel(model)                      # or: no wrapper and average_gradients(model)
    for X, y in loader:                                       # the same batches in every process
        loss = cross_entropy(ddp(local_shard(X)), local_shard(y)); loss.backward(); optimizer.step() ...

Why one device: the feedback matrix B of an optical projector is the device's own (its scattering medium, read
through its settings), so every process must project through the same device. DDP keeps parameters and buffers in
step across processes but cannot see an optical B; :func:`check_same_feedback` compares what fixes it (the device's
model, serial number and fingerprint, the projector's and the feedback's options, a digital matrix's digest) and
raises :class:`~dfa_client.errors.FeedbackMismatchError` in every process when they differ.

Why the average is right: the DFA gradient is, as backprop's, a sum of per-example terms (a hidden layer receives
B_l e_i for example i's output error e_i), and the output error of a mean loss over n examples is e_i / n. The
ternary code of an error does not depend on its scale and its rescaling is linear in it, so averaging the mean
gradients of P equal shards gives the mean gradient of the whole batch (up to float32 sums in another order).

Two ways to average, both checked against a single-process run (tests/dfa/test_dfa_distributed.py):

- ``torch.nn.parallel.DistributedDataParallel``, with the DFA attached before wrapping (so that DDP's first
  broadcast includes a digital feedback buffer). DDP hooks each parameter's gradient accumulator; the DFA taps are
  autograd Functions that only replace the gradient flowing into a hidden layer's output, so every parameter still
  gets its gradient once per backward and DDP averages it as usual.
- :func:`average_gradients` after ``backward()``, for code that does not wrap its model: one all-reduce of every
  gradient, after a check that all processes hold the same parameters.

The collectives here run on CPU tensors (the gloo backend) and each waits at most ``timeout_s``. torch is imported
by this module only (and by ``dfa_client.torch_dfa``); it never imports the driver.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .dfa import FeedbackProjection
from .errors import ConnectionFailedError, DataParallelError, FeedbackMismatchError, RequestTimeoutError
from .torch_dfa import DFA

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "feedback_identity",
    "check_same_feedback",
    "local_shard",
    "average_gradients",
]

_log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 300.0
"""The longest a collective waits for every process: a process may wait its turn at the device (the service's own
default request timeout is also 300 s)."""

_IDENTITY_DEVICE_KEYS = ("model", "serial_number", "firmware_version", "device_fingerprint", "seed")
"""The projector details that fix B: the device's identity (and fingerprint, from the service), a digital seed."""


# -- what fixes the feedback ----------------------------------------------------------------------------------
def feedback_identity(feedback: DFA | FeedbackProjection) -> dict[str, Any]:
    """What fixes a network's feedback, as a JSON-able dict: two processes whose identities are equal project
    their errors through the same matrix, scaled and encoded the same way.

    Keys: the projector's backend, its device identity (model, serial number, firmware, and the service's
    ``device_fingerprint`` of the settings that fix B) or digital seed, n_features, n_components, scheme, n_bits; the
    feedback's layer sizes, scale, encoding, threshold, rule, rescale and centre; for a feedback held digitally
    (a DFA's ``feedback_matrix``), the SHA-256 of the matrix. A value of None is not known in this process yet
    (n_features before the first call).

    Raises:
        DataParallelError: ``feedback`` is neither a DFA nor a FeedbackProjection.
    """
    projection = feedback.feedback if isinstance(feedback, DFA) else feedback
    if not isinstance(projection, FeedbackProjection):
        raise DataParallelError(f"feedback must be a DFA or a FeedbackProjection, got {type(feedback).__name__}")
    info = projection.projector.info
    identity: dict[str, Any] = {
        "backend": info.backend,
        **{key: info.details.get(key) for key in _IDENTITY_DEVICE_KEYS if key in info.details},
        "n_features": info.n_features,
        "n_components": info.n_components,
        "scheme": info.scheme,
        "n_bits": info.n_bits,
        "layer_sizes": list(projection.layer_sizes),
        "scale": list(projection.scale) if isinstance(projection.scale, (list, tuple)) else projection.scale,
        "encoding": projection.encoding,
    }
    if projection.encoding == "ternary":
        identity.update(
            threshold=projection.threshold, rule=projection.rule, rescale=projection.rescale, centre=projection.centre
        )
    matrix = feedback._matrix() if isinstance(feedback, DFA) else None
    if matrix is not None:
        data = np.ascontiguousarray(matrix.detach().to(device="cpu", dtype=torch.float32).numpy())
        identity["matrix_sha256"] = hashlib.sha256(data.tobytes()).hexdigest()
    return identity


def check_same_feedback(
    feedback: DFA | FeedbackProjection,
    group: dist.ProcessGroup | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> dict[str, Any]:
    """Check that every process of ``group`` projects through the same feedback; call it in every process before
    training (it is a collective: each process must call it).

    Compares :func:`feedback_identity` across the processes; a value not yet known in a process (None) is not
    compared. Returns this process's identity.

    Raises:
        DataParallelError: no process group, or one that is not gloo.
        FeedbackMismatchError: the identities differ (in every process, naming what differs and where).
        RequestTimeoutError: a process did not take part within ``timeout_s``.
        ConnectionFailedError: the process group failed (a process died).
    """
    world_size, rank = _group_size_and_rank(group)
    identity = feedback_identity(feedback)
    identities = _gather_json(identity, group, world_size, timeout_s, "check_same_feedback")
    differences = _differences(identities)
    if differences:
        shown = "; ".join(f"{key}: {_by_value(values)}" for key, values in differences.items())
        raise FeedbackMismatchError(
            f"the {world_size} processes do not project through the same feedback ({shown}). Every process must "
            "use the same device (the same OPU service) with the same projector and feedback options"
        )
    _log.debug("rank %d of %d: the same feedback everywhere: %s", rank, world_size, identity)
    return identity


def _differences(identities: list[dict[str, Any]]) -> dict[str, dict[int, Any]]:
    """{key: {rank: value}} for every key whose known (not None) values differ between the ranks."""
    keys = sorted({key for identity in identities for key in identity})
    differences: dict[str, dict[int, Any]] = {}
    for key in keys:
        values = {rank: identity.get(key, "<absent>") for rank, identity in enumerate(identities)}
        known = {json.dumps(value, sort_keys=True) for value in values.values() if value is not None}
        if len(known) > 1:
            differences[key] = values
    return differences


def _by_value(values: dict[int, Any]) -> str:
    """``{rank: value}`` as "value (ranks 0, 2), other (rank 1)": short for many processes."""
    groups: dict[str, list[int]] = {}
    for rank, value in values.items():
        groups.setdefault(repr(value), []).append(rank)
    return ", ".join(
        f"{value} (rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))})" for value, ranks in groups.items()
    )


# -- shards -----------------------------------------------------------------------------------------------------
def local_shard(batch: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """This process's rows of ``batch`` (the same batch in every process): rows rank x n/P to (rank + 1) x n/P
    of n, for P processes. Equal shards make the average of the processes' mean gradients the whole batch's mean.

    Raises:
        DataParallelError: no process group, a 0-d tensor, or n not a multiple of P.
    """
    world_size, rank = _group_size_and_rank(group)
    if not isinstance(batch, torch.Tensor) or batch.ndim == 0:
        raise DataParallelError("local_shard takes a tensor with a batch axis first")
    n = batch.shape[0]
    if n % world_size:
        raise DataParallelError(
            f"a batch of {n} does not split into {world_size} equal shards: the average of unequal shards' mean "
            "gradients is not the batch's mean gradient. Use a batch size that is a multiple of the processes"
        )
    size = n // world_size
    return batch[rank * size : (rank + 1) * size]


# -- gradients --------------------------------------------------------------------------------------------------
def average_gradients(
    model: torch.nn.Module | Iterable[torch.nn.Parameter],
    group: dist.ProcessGroup | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> None:
    """Replace every parameter's ``.grad`` by its average over the processes of ``group``; call it in every
    process after ``backward()`` and before ``optimizer.step()`` (for a model not wrapped in DDP).

    Parameters that require gradients take part in their order; one without a gradient in a process counts as
    zeros there, and one without a gradient in every process keeps ``.grad`` None. Two collectives: a small one
    that checks every process holds the same parameters (shapes and dtypes), then one sum of all the gradients (and
    a third, small, when a process misses a gradient).

    Raises:
        DataParallelError: no process group or not gloo; a DistributedDataParallel model (DDP already averages);
            parameters that differ between the processes (every process raises it; nothing is averaged).
        RequestTimeoutError: a process did not take part within ``timeout_s``.
        ConnectionFailedError: the process group failed (a process died).
    """
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        raise DataParallelError(
            "the model is wrapped in DistributedDataParallel, which averages the gradients during backward: "
            "do not average them again"
        )
    world_size, _ = _group_size_and_rank(group)
    params = list(model.parameters() if isinstance(model, torch.nn.Module) else model)
    params = [p for p in params if p.requires_grad]
    signature = hashlib.sha256(repr([(tuple(p.shape), str(p.dtype)) for p in params]).encode()).digest()
    token = int.from_bytes(signature[:7], "little")  # fits an int64 with room for its negative
    has_grad = [int(p.grad is not None) for p in params]
    # MAX of (token, -token) is (token, -token) in every process exactly when all tokens are equal (a fixed size,
    # whatever the parameters); the third: whether any process misses a gradient.
    check = torch.tensor([token, -token, int(not all(has_grad))], dtype=torch.int64)
    _all_reduce(check, dist.ReduceOp.MAX, group, timeout_s, "average_gradients (parameter check)")
    if int(check[0]) != token or int(check[1]) != -token:
        raise DataParallelError(
            "the processes hold different parameters (shapes, dtypes or their number differ): each process must "
            "build the same model"
        )
    taking_part = params
    if int(check[2]):  # which parameters have a gradient in some process (the others keep None)
        flags = torch.tensor(has_grad, dtype=torch.int64)
        _all_reduce(flags, dist.ReduceOp.MAX, group, timeout_s, "average_gradients (gradient check)")
        taking_part = [p for p, flag in zip(params, flags.tolist(), strict=True) if flag]
    for dtype in sorted({p.dtype for p in taking_part}, key=str):
        same = [p for p in taking_part if p.dtype == dtype]
        flat = torch.cat([_grad_or_zeros(p).reshape(-1).to("cpu") for p in same])
        _all_reduce(flat, dist.ReduceOp.SUM, group, timeout_s, "average_gradients")
        flat /= world_size
        offset = 0
        for p in same:
            part = flat[offset : offset + p.numel()].view_as(p).to(p.device)
            offset += p.numel()
            if p.grad is None:
                p.grad = part.clone()
            else:
                p.grad.copy_(part)


def _grad_or_zeros(p: torch.nn.Parameter) -> torch.Tensor:
    return p.grad.detach() if p.grad is not None else torch.zeros_like(p)


# -- collectives with a timeout -------------------------------------------------------------------------------
def _group_size_and_rank(group: dist.ProcessGroup | None) -> tuple[int, int]:
    """(world size, rank) of ``group``; DataParallelError without an initialised gloo process group."""
    if not (dist.is_available() and dist.is_initialized()):
        raise DataParallelError(
            "torch.distributed is not initialised: call torch.distributed.init_process_group('gloo', ...) in "
            "every process first"
        )
    backend = str(dist.get_backend(group))
    if backend != "gloo":
        raise DataParallelError(
            f"the process group's backend is {backend!r}; these helpers run on CPU tensors and need gloo (with "
            "NCCL, wrap the model in DistributedDataParallel and pass a gloo group made with "
            "torch.distributed.new_group(backend='gloo') to check_same_feedback)"
        )
    return dist.get_world_size(group), dist.get_rank(group)


def _wait(work: Any, timeout_s: float, what: str) -> None:
    """Wait for an asynchronous collective at most ``timeout_s``; its failure as a DFA client error."""
    try:
        work.wait(datetime.timedelta(seconds=timeout_s))
    except RuntimeError as exc:
        if "timed out" in str(exc).lower() or "timeout" in str(exc).lower():
            raise RequestTimeoutError(
                f"{what}: not every process took part within {timeout_s:g} s (is each process calling it?)"
            ) from exc
        raise ConnectionFailedError(f"{what}: the process group failed: {exc}") from exc


def _all_reduce(tensor: torch.Tensor, op: Any, group: dist.ProcessGroup | None, timeout_s: float, what: str) -> None:
    _wait(dist.all_reduce(tensor, op=op, group=group, async_op=True), timeout_s, what)


def _gather_json(
    value: dict[str, Any], group: dist.ProcessGroup | None, world_size: int, timeout_s: float, what: str
) -> list[dict[str, Any]]:
    """Every process's ``value`` (JSON-able), in rank order: the lengths first, then the padded bytes."""
    data = json.dumps(value, sort_keys=True, default=str).encode()
    length = torch.tensor([len(data)], dtype=torch.int64)
    lengths = [torch.zeros(1, dtype=torch.int64) for _ in range(world_size)]
    _wait(dist.all_gather(lengths, length, group=group, async_op=True), timeout_s, what)
    longest = max(int(n) for n in lengths)
    mine = torch.zeros(longest, dtype=torch.uint8)
    mine[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    gathered = [torch.zeros(longest, dtype=torch.uint8) for _ in range(world_size)]
    _wait(dist.all_gather(gathered, mine, group=group, async_op=True), timeout_s, what)
    return [json.loads(bytes(chunk[: int(n)].tolist()).decode()) for chunk, n in zip(gathered, lengths, strict=True)]
