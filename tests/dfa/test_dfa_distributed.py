"""Data-parallel DFA training on one OPU (dfa_client.distributed): trainer processes share the OPU service.

An OPU service runs in this process over a small noiseless emulator; two trainer processes (torch.multiprocessing,
gloo) train the same network on the two halves of every batch, their feedback projected optically through the
service (ternary codes), and average their gradients, once with DistributedDataParallel and once with
``average_gradients``. The same network trained in this process on the whole batches, through the same service,
must end with the same weights (float32 rounding aside). Without PyTorch this file is skipped; with
OPU_REQUIRE_TORCH=1 (as CI sets it) a missing PyTorch fails it instead.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

try:
    import torch
except ImportError:
    if os.environ.get("OPU_REQUIRE_TORCH"):  # CI installs PyTorch: there these tests must run
        raise
    pytest.skip("PyTorch is not installed (the optional torch extra: pip install torch)", allow_module_level=True)

import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import dfa_client
from dfa_client import distributed
from dfa_client.dfa import FeedbackProjection
from dfa_client.distributed import average_gradients, check_same_feedback, feedback_identity, local_shard
from dfa_client.errors import (
    ConnectionFailedError,
    DataParallelError,
    FeedbackMismatchError,
    RequestTimeoutError,
)
from dfa_client.torch_dfa import DFA, DFAPerceptron
from tests.support import small_sim

# The conformance suite's optical settings (12-bit pixels, an exposure below saturation, no calibration record),
# with every noise source off: a projection through the service is then bit-identical however it is coalesced.
SIM = small_sim("noise=0&seed=3")
OTHER_SIM = small_sim("noise=0&seed=4")  # another emulated OPU: another random matrix, for the misuse checks
SETTINGS = {"calibration": None, "pixel_format": "MONO12", "exposure_us": 200}
SIZES = (16, 24, 24, 6)  # inputs, two hidden layers, classes
HIDDEN = list(SIZES[1:-1])
WORLD, BATCH, STEPS, LR = 2, 32, 4, 0.1
VARIANTS = ("ddp", "all_reduce")
TIMEOUT_S = 60.0  # every collective, request and join; the whole test takes about 10 s
VECTORS_PER_STEP = BATCH // WORLD + 1  # a shard's ternary codes and the all-ones vector that centres them


# ------------------------------------------------------------------------------------------- in this process
def test_without_a_process_group_every_helper_says_so():
    assert not dist.is_initialized()
    dfa = DFA.digital(SIZES[-1], HIDDEN, seed=1)
    for call in (
        lambda: check_same_feedback(dfa),
        lambda: local_shard(torch.zeros(4, 2)),
        lambda: average_gradients(torch.nn.Linear(2, 2)),
    ):
        with pytest.raises(DataParallelError, match="init_process_group"):
            call()


def test_the_feedback_identity_names_what_fixes_the_matrix():
    one, same, other = (DFA.digital(SIZES[-1], HIDDEN, seed=seed) for seed in (1, 1, 2))
    assert feedback_identity(one) == feedback_identity(same)
    identity = feedback_identity(one)
    assert identity["backend"] == "digital" and identity["seed"] == 1 and identity["layer_sizes"] == HIDDEN
    differences = distributed._differences([identity, feedback_identity(other)])
    assert set(differences) == {"seed", "matrix_sha256"}
    assert differences["seed"] == {0: 1, 1: 2}
    # a value not known yet in one process (n_features before the first call) is not a difference
    unknown = {**identity, "n_features": None}
    assert distributed._differences([identity, unknown]) == {}
    with pytest.raises(DataParallelError):
        feedback_identity(torch.nn.Linear(2, 2))


class _FailedWork:
    def __init__(self, message: str) -> None:
        self.message = message

    def wait(self, timeout: datetime.timedelta) -> bool:
        raise RuntimeError(self.message)


def test_a_collective_that_times_out_or_fails_raises_the_client_errors():
    with pytest.raises(RequestTimeoutError, match="within 2 s"):
        distributed._wait(_FailedWork("[gloo] Operation timed out!"), 2.0, "average_gradients")
    with pytest.raises(ConnectionFailedError, match="Connection closed by peer"):
        distributed._wait(_FailedWork("Connection closed by peer"), 2.0, "average_gradients")


def test_one_process_averages_to_its_own_gradients_and_keeps_missing_ones_missing(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
        model[0](torch.ones(2, 3)).sum().backward()  # the second layer gets no gradient
        want = model[0].weight.grad.clone()
        average_gradients(model, timeout_s=TIMEOUT_S)
        assert torch.equal(model[0].weight.grad, want) and model[1].weight.grad is None
        assert local_shard(torch.arange(3)).tolist() == [0, 1, 2]
        assert check_same_feedback(DFA.digital(SIZES[-1], HIDDEN, seed=1))["seed"] == 1
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------- two processes
def _data() -> tuple[torch.Tensor, torch.Tensor]:
    """The same STEPS batches in every process."""
    generator = torch.Generator().manual_seed(7)
    X = torch.rand(STEPS, BATCH, SIZES[0], generator=generator)
    y = torch.randint(0, SIZES[-1], (STEPS, BATCH), generator=generator)
    return X, y


def _network(variant: str, projector: dfa_client.Projector) -> torch.nn.Module:
    """The same initial weights in every process: a DFAPerceptron (for DDP) or a Sequential with DFA attached."""
    torch.manual_seed(0)
    dfa = DFA(FeedbackProjection(projector, HIDDEN, encoding="ternary"))
    if variant == "ddp":
        return DFAPerceptron(SIZES, dfa)
    model = torch.nn.Sequential(
        torch.nn.Linear(SIZES[0], SIZES[1]),
        torch.nn.Tanh(),
        torch.nn.Linear(SIZES[1], SIZES[2]),
        torch.nn.Tanh(),
        torch.nn.Linear(SIZES[2], SIZES[3]),
    )
    dfa.attach(model, blocks=["1", "3"], output="4")
    return model


def _train(
    model: torch.nn.Module,
    forward: Callable[[torch.Tensor], torch.Tensor],
    shard: Callable[[torch.Tensor], torch.Tensor],
    after_backward: Callable[[], None],
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """STEPS plain SGD steps on this process's shard of each batch: the final weights, and each parameter's largest
    gradient entry over the steps."""
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    X, y = _data()
    largest = {name: 0.0 for name, _ in model.named_parameters()}
    for step in range(STEPS):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(forward(shard(X[step])), shard(y[step]))
        loss.backward()
        after_backward()
        for name, p in model.named_parameters():
            largest[name] = max(largest[name], float(p.grad.abs().max()))
        optimizer.step()
    return {name: p.detach().numpy().copy() for name, p in model.named_parameters()}, largest


def _misuse_is_refused(rank: int, projector: dfa_client.Projector, other_url: str) -> None:
    """In every process at once: the typed errors of dfa_client.distributed, none of which leaves the process group
    out of step (each check runs its collectives to the end, then raises in every process)."""
    # Rank 1 projects through another emulated OPU (another seed: another random matrix) behind its own service.
    with dfa_client.connect(other_url, sum(HIDDEN), n_features=SIZES[-1], timeout_s=TIMEOUT_S) as other:
        mine = DFA(FeedbackProjection(projector if rank == 0 else other, HIDDEN, encoding="ternary"))
        with pytest.raises(FeedbackMismatchError, match="serial_number") as raised:
            check_same_feedback(mine, timeout_s=TIMEOUT_S)
        assert "device_fingerprint" in str(raised.value)
    # The same device, other options (rank 1 ternarises with another threshold).
    options = FeedbackProjection(projector, HIDDEN, encoding="ternary", threshold=0.3 if rank == 0 else 0.5)
    with pytest.raises(FeedbackMismatchError, match="threshold"):
        check_same_feedback(options, timeout_s=TIMEOUT_S)
    # Other parameters (rank 1's layer has no bias): refused in both processes, nothing averaged.
    layer = torch.nn.Linear(3, 2, bias=rank == 0)
    layer(torch.ones(1, 3)).sum().backward()
    kept = layer.weight.grad.clone()
    with pytest.raises(DataParallelError, match="different parameters"):
        average_gradients(layer, timeout_s=TIMEOUT_S)
    assert torch.equal(layer.weight.grad, kept)
    # A parameter without a gradient in one process counts as zeros there; one with none anywhere stays None.
    torch.manual_seed(0)
    layers = torch.nn.ModuleList(torch.nn.Linear(3, 2) for _ in range(3))
    used = layers[:2] if rank == 0 else layers[:1]  # separate branches: layer 0's gradient is the same in both
    sum(layer(torch.ones(1, 3)).sum() for layer in used).backward()
    first = layers[0].weight.grad.clone()  # the same in both processes
    second = layers[1].weight.grad.clone() if rank == 0 else None
    average_gradients(layers, timeout_s=TIMEOUT_S)
    assert torch.equal(layers[0].weight.grad, first)
    if second is not None:
        assert torch.equal(layers[1].weight.grad, second / 2)
    assert layers[1].weight.grad is not None and layers[2].weight.grad is None
    with pytest.raises(DataParallelError, match="equal shards"):
        local_shard(torch.zeros(BATCH + 1, 2))


def _worker(rank: int, url: str, other_url: str, init_method: str, out_dir: Path) -> None:
    """One trainer process: the misuse checks, then both variants on its half of each batch, feedback through the
    service."""
    dist.init_process_group(
        "gloo", init_method=init_method, rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=TIMEOUT_S)
    )
    try:
        with dfa_client.connect(url, sum(HIDDEN), n_features=SIZES[-1], timeout_s=TIMEOUT_S) as projector:
            _misuse_is_refused(rank, projector, other_url)
            for variant in VARIANTS:
                model = _network(variant, projector)
                check_same_feedback(model.dfa, timeout_s=TIMEOUT_S)
                if variant == "ddp":
                    wrapped = DistributedDataParallel(model)
                    weights, _ = _train(model, wrapped, local_shard, lambda: None)
                    with pytest.raises(DataParallelError, match="DistributedDataParallel"):
                        average_gradients(wrapped)  # DDP averaged already
                else:
                    average = functools.partial(average_gradients, model, timeout_s=TIMEOUT_S)
                    weights, _ = _train(model, model, local_shard, average)
                np.savez(out_dir / f"{variant}-{rank}.npz", **weights)
            report = {"vectors": projector.vectors_projected, "serial_number": projector.info.details["serial_number"]}
            (out_dir / f"report-{rank}.json").write_text(json.dumps(report))
    finally:
        dist.destroy_process_group()


def _join(context: mp.ProcessContext, until: Callable[[], bool], deadline: float, what: str) -> None:
    """Poll ``until`` while the children run (a child's failure raises here, with its traceback)."""
    while not until():
        if context.join(timeout=0.05) and not until():
            raise AssertionError(f"the trainer processes ended before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_two_trainer_processes_sharing_one_opu_service_train_as_one_process_on_the_whole_batches(tmp_path):
    from opu_driver.service import OpuService

    service = OpuService(SIM, opu_settings=SETTINGS).start()
    other = OpuService(OTHER_SIM, opu_settings=SETTINGS).start()
    context: mp.ProcessContext | None = None
    try:
        url, other_url = (f"tcp://{host}:{port}" for host, port in (service.address, other.address))
        # Paused, the service queues both processes' first requests; resumed, it serves them in one device call.
        service.pause()
        before = service.stats()
        init_method = f"file://{tmp_path / 'rendezvous'}"
        context = mp.spawn(_worker, args=(url, other_url, init_method, tmp_path), nprocs=WORLD, join=False)
        deadline = time.monotonic() + TIMEOUT_S
        _join(context, lambda: service.pending == WORLD, deadline, "both processes' first requests")
        service.resume()
        _join(context, lambda: context.join(timeout=0.05), deadline, "the trainer processes to finish")
        parallel = service.stats()

        with dfa_client.connect(url, sum(HIDDEN), n_features=SIZES[-1], timeout_s=TIMEOUT_S) as projector:
            serial = projector.info.details["serial_number"]
            initial, single, gradient = {}, {}, {}
            for variant in VARIANTS:
                model = _network(variant, projector)
                initial[variant] = {name: p.detach().numpy().copy() for name, p in model.named_parameters()}
                single[variant], gradient[variant] = _train(model, model, lambda batch: batch, lambda: None)
        after = service.stats()
    finally:
        service.resume()
        if context is not None:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
                    process.join(5)
        service.stop()
        other.stop()

    # The service served both processes, coalesced their requests, and served the single-process run too.
    requests = parallel.requests - before.requests
    assert requests == WORLD * len(VARIANTS) * STEPS
    assert parallel.device_calls - before.device_calls < requests  # at least the first two shared a call
    assert after.requests - parallel.requests == len(VARIANTS) * STEPS
    for rank in range(WORLD):
        report = json.loads((tmp_path / f"report-{rank}.json").read_text())
        assert report == {"vectors": len(VARIANTS) * STEPS * VECTORS_PER_STEP, "serial_number": serial}

    # Weights: the same in both processes (they applied the same averaged gradient), and the single process's up
    # to float32 rounding.
    #
    # Tolerance. A process's shard holds the same rows as the whole batch, and its mean loss scales their output
    # errors by 1/16 instead of 1/32: an exact factor of 2, which leaves the ternary codes as they are and scales
    # their least-squares rescaling exactly, so the service returns the same rows bit for bit, times 2. What
    # differs is the order of float32 sums: a weight gradient is a sum over 16 rows in each process, then an
    # average, instead of one sum over 32 rows (and a forward pass over 16 rows may take another matrix-product
    # path). Summed in another order, n = 32 terms move by about n u times their sum (u = 2^-24, first order), so
    # a step LR x gradient moves by LR n u G, G the parameter's largest gradient entry (0.05-0.13 here: 0.8 ulp of
    # a weight of 0.25). The updated weight then rounds to one side or the other: one ulp of the largest weight,
    # and one more for the next forward pass seeing weights an ulp apart. Per step 2 ulp(max|W|) + LR n u G,
    # times STEPS (differences add up step after step): about 11 ulp of the largest weight. Measured: at most
    # 2 ulp after 4 steps, while training moves every parameter by 0.01-0.03 (over 10^4 times the tolerance).
    u, n = 2.0**-24, BATCH
    for variant in VARIANTS:
        first = dict(np.load(tmp_path / f"{variant}-0.npz"))
        second = dict(np.load(tmp_path / f"{variant}-1.npz"))
        assert first.keys() == second.keys() == single[variant].keys()
        for name, want in single[variant].items():
            np.testing.assert_array_equal(first[name], second[name], err_msg=f"{variant} {name}")
            ulp = float(np.spacing(np.abs(want).max()))
            atol = STEPS * (2 * ulp + LR * n * u * gradient[variant][name])
            np.testing.assert_allclose(first[name], want, rtol=0, atol=atol, err_msg=f"{variant} {name}")
            moved = float(np.abs(want - initial[variant][name]).max())
            assert moved > 100 * atol, f"{variant} {name}: the weights hardly moved ({moved:.3g})"
