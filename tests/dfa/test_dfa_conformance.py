"""The projector contract (dfa_client/base.py), run on every backend with the same settings.

Every backend must: return float32 (batch, n_components); give zeros for zero vectors; keep one matrix B for its
life (repeatable, linear in e); have B entries of zero mean and unit variance on its usable outputs; refuse bad
input with InvalidInputError before sending anything; be usable as a context manager and from several threads.
Optical backends add camera noise and return 0 on a few masked outputs (pixels whose reference is unusable);
the tolerances below take both into account, each derived where it is used.
"""

from __future__ import annotations

import math
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

import dfa_client
from dfa_client import InvalidInputError, ProjectorClosedError
from tests.devices.lab.support import SMALL_LAB_QUERY, write_rig
from tests.support import small_sim

N_FEATURES, N_OUT = 16, 256
OPTICAL_SIM = small_sim("seed=3")


def _digital(**options):
    return dfa_client.connect("digital://?seed=7", N_OUT, **options)


def _local(**options):
    # 12-bit pixels and an exposure that keeps the brightest linear-mode frames below full scale, as the
    # exposure calibration would choose (opu calibrate exposure).
    return dfa_client.connect(OPTICAL_SIM, N_OUT, calibration=None, pixel_format="MONO12", exposure_us=200, **options)


_RIG_FOLDER: list[Path] = []


def _rig(**options):
    # A lab-built OPU of emulated parts (the fake ALP library, the emulated camera and laser), as rig://.
    if not _RIG_FOLDER:
        _RIG_FOLDER.append(Path(tempfile.mkdtemp(prefix="dfa-rig-")))
    rig = write_rig(_RIG_FOLDER[0], dmd='backend = "fake-alp"', sim=SMALL_LAB_QUERY + "&seed=3")
    settings = {"calibration": None, "pixel_format": "MONO12", "exposure_us": 200}
    return dfa_client.connect(f"rig://{rig}", N_OUT, **settings, **options)


_SERVICES: list = []


def _tcp(**options):
    # The OPU service, started in this process on a free loopback port (once per module), serving the same
    # emulated device with the same settings as the in-process backend; stopped by _stop_services below.
    if not _SERVICES:
        from opu_driver.service import OpuService

        _SERVICES.append(
            OpuService(
                OPTICAL_SIM, opu_settings={"calibration": None, "pixel_format": "MONO12", "exposure_us": 200}
            ).start()
        )
    host, port = _SERVICES[0].address
    return dfa_client.connect(f"tcp://{host}:{port}", N_OUT, timeout_s=30, **options)


@pytest.fixture(scope="module", autouse=True)
def _stop_services():
    yield
    while _SERVICES:
        _SERVICES.pop().stop()


# Each backend: a factory taking projector options, and whether it is exact (no camera noise, no mask).
BACKENDS = [
    pytest.param((_digital, True), id="digital"),
    pytest.param((_local, False), id="sim"),
    pytest.param((_tcp, False), id="tcp"),
    pytest.param((_rig, False), id="rig"),
]


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture
def make_projector(backend):
    factory, _ = backend
    made = []

    def make(**options):
        projector = factory(**options)
        made.append(projector)
        return projector

    yield make
    for projector in made:
        projector.close()


@pytest.fixture
def exact(backend):
    return backend[1]


def _ternary(rng, batch, density=0.5):
    return rng.choice([-1, 0, 1], size=(batch, N_FEATURES), p=[density / 2, 1 - density, density / 2]).astype(np.int8)


def _usable(P):
    """Outputs that are not masked (never exactly 0 over many nonzero vectors)."""
    return np.any(P != 0, axis=0)


def test_shapes_and_dtypes(make_projector):
    p = make_projector()
    rng = np.random.default_rng(0)
    E = _ternary(rng, 5)
    out = p.project(E)
    assert out.shape == (5, N_OUT) and out.dtype == np.float32
    one = p.project(E[0])
    assert one.shape == (N_OUT,) and one.dtype == np.float32
    empty = p.project(np.zeros((0, N_FEATURES)))
    assert empty.shape == (0, N_OUT) and empty.dtype == np.float32
    info = p.info
    assert (info.n_features, info.n_components, info.scheme) == (N_FEATURES, N_OUT, "four_frame")
    assert p.vectors_projected == 6


def test_zero_vectors_give_zeros(make_projector):
    p = make_projector(n_features=N_FEATURES)
    E = np.zeros((3, N_FEATURES))
    E[1, 2] = 1
    out = p.project(E)
    assert (out[[0, 2]] == 0).all() and np.any(out[1] != 0)


def test_bad_input_is_refused_before_anything_is_sent(make_projector):
    p = make_projector()
    p.project(np.ones((1, N_FEATURES)))  # fixes n_features
    projected = p.vectors_projected
    sent = getattr(p, "frames_sent", None)
    bad = [
        np.full((2, N_FEATURES), np.nan),
        np.full((2, N_FEATURES), np.inf),
        np.ones((2, N_FEATURES + 1)),
        np.ones((2, 2, N_FEATURES)),
        np.array([["a"] * N_FEATURES]),
        np.ones((2, 0)),
        np.ma.masked_array(np.ones((2, N_FEATURES)), mask=True),
        [[1, 2], [3]],
    ]
    for errors in bad:
        with pytest.raises(InvalidInputError):
            p.project(errors)
    small = make_projector(max_batch=4)
    with pytest.raises(InvalidInputError, match="max_batch"):
        small.project(np.ones((5, N_FEATURES)))
    assert p.vectors_projected == projected and small.vectors_projected == 0
    assert getattr(p, "frames_sent", None) == sent


def test_bad_options_are_refused(backend):
    factory, _ = backend
    for options in ({"scheme": "three_frame"}, {"n_bits": 0}, {"n_features": 0}, {"max_batch": 0}, {"n_bits": 2.5}):
        with pytest.raises(InvalidInputError):
            factory(**options)


def test_one_matrix_repeatable_and_linear(make_projector, exact):
    p = make_projector()
    rng = np.random.default_rng(1)
    a = _ternary(rng, 40, density=0.3)
    b = np.where(a == 0, _ternary(rng, 40, density=0.4), 0).astype(np.int8)  # disjoint supports: a + b ternary
    Pa, Pa2, Pb, Pab = p.project(a), p.project(a), p.project(b), p.project(a + b)
    if exact:
        np.testing.assert_array_equal(Pa, Pa2)
        np.testing.assert_allclose(Pa + Pb, Pab, rtol=1e-5, atol=1e-4)
        return
    use = _usable(np.vstack([Pa, Pb]))
    assert use.mean() > 0.85  # the linear mode masks only pixels with a weak or saturated reference
    # An output whose frames saturated in one call is 0 there (the linear mode says so in its log): such
    # (vector, output) pairs are left out, as a user leaves out what the device could not measure.
    measured = (Pa != 0) & (Pa2 != 0) & (Pb != 0) & (Pab != 0)
    assert measured[:, use].mean() > 0.98  # about 0.99 at this exposure: a few rare saturations
    Pa, Pa2, Pb, Pab = (np.where(measured, x, np.nan)[:, use].astype(np.float64) for x in (Pa, Pa2, Pb, Pab))
    keep = ~np.isnan(Pa + Pa2 + Pb + Pab)
    Pa, Pa2, Pb, Pab = Pa[keep], Pa2[keep], Pb[keep], Pab[keep]
    noise = np.var(Pa - Pa2) / 2  # per-projection noise variance, from the repeat
    # Repeatable: the correlation of two repeats is S / (S + N) (the linear mode's fidelity bar, 0.99, is on its
    # square root).
    assert np.corrcoef(Pa.ravel(), Pa2.ravel())[0, 1] >= 0.98
    # Linear: the residual Pa + Pb - Pab holds the independent noise of three projections (3 N); a linear-mode
    # bias would add to it. The variance estimate of N has relative sd sqrt(2 / n_eff) (n_eff ~ size / 4: a
    # speckle grain spans ~2x2 pixels): allow 5 of those, and a + b's extra light (more shot noise, up to ~20%).
    residual = np.var(Pa + Pb - Pab)
    n_eff = Pa.size / 4
    assert residual <= 3 * noise * (1.2 + 5 * math.sqrt(2 / n_eff))


def test_matrix_entries_have_zero_mean_and_unit_variance(make_projector, exact):
    p = make_projector()
    rng = np.random.default_rng(2)
    E = _ternary(rng, 60)
    P, P2 = p.project(E), p.project(E)
    use = _usable(P)
    P, P2 = P[:, use].astype(np.float64), P2[:, use].astype(np.float64)
    noise = 0.0 if exact else np.var(P - P2) / 2
    k = np.mean(np.sum(E != 0, axis=1))
    # Var(B e) = |e|^2 var(B) = k for unit-variance entries; the camera noise adds N. Sampling: about n_eff
    # independent values (a grain of ~2x2 pixels on optical backends), relative sd sqrt(2 / n_eff) of a variance;
    # 5 of those, plus 0.05 for the linear mode's own estimate of the scale (32 probe features).
    n_eff = P.size / (1 if exact else 4)
    tolerance = 5 * math.sqrt(2 / n_eff) + (0 if exact else 0.05)
    assert abs((P.var() - noise) / k - 1) < tolerance
    # zero mean: the mean of n_eff values of variance k, within 5 standard errors
    assert abs(P.mean()) < 5 * math.sqrt(k / n_eff)


def test_real_valued_errors_are_projected_linearly(make_projector, exact):
    p = make_projector(n_bits=8)
    rng = np.random.default_rng(3)
    E = rng.normal(size=(30, N_FEATURES))
    basis = p.project(np.eye(N_FEATURES))  # rows of B, one projection each
    P = p.project(E)
    use = _usable(basis)
    predicted = E @ basis[:, use].astype(np.float64)
    correlation = np.corrcoef(P[:, use].ravel(), predicted.ravel())[0, 1]
    if exact:
        assert correlation > 1 - 1e-9
    else:
        # The prediction carries the noise of 16 basis projections and the result that of 8 bit planes: both
        # small against the signal (four-frame SNR ~ 20 dB per projection); 0.95 leaves room for the bit planes'
        # quantisation of the smallest entries.
        assert correlation > 0.95


def test_context_manager_and_close(backend):
    factory, _ = backend
    with factory() as p:
        p.project(np.ones((1, N_FEATURES)))
    assert p.closed
    with pytest.raises(ProjectorClosedError):
        p.project(np.ones((1, N_FEATURES)))
    p.close()  # twice is fine


def test_calls_from_several_threads_each_get_their_own_result(make_projector, exact):
    p = make_projector()
    rng = np.random.default_rng(4)
    inputs = [_ternary(rng, 8) for _ in range(6)]
    alone = [p.project(E) for E in inputs]
    results: dict[int, np.ndarray] = {}
    failures = []

    def worker(i: int) -> None:
        try:
            results[i] = p.project(inputs[i])
        except Exception as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not failures and len(results) == len(inputs)
    for i in range(len(inputs)):
        if exact:
            np.testing.assert_array_equal(results[i], alone[i])
        else:
            # its own result, not a neighbour's: far closer to its solo projection than to any other input's
            use = _usable(alone[i])
            own = np.corrcoef(results[i][:, use].ravel(), alone[i][:, use].ravel())[0, 1]
            others = max(
                np.corrcoef(results[i][:, use].ravel(), alone[j][:, use].ravel())[0, 1]
                for j in range(len(inputs))
                if j != i
            )
            assert own > 0.95 and own > others + 0.5
