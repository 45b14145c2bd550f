"""Bad input across the public API, table-driven.

Every public entry point is fed NaN, Inf, wrong shapes and dtypes, empty batches, huge sizes, wrong URL forms and
bad options. Each row of a table names one case (its pytest id) and what must happen:

- a typed error (the exact class from ``opu_driver.errors`` or ``dfa_client.errors``) AND "device state unchanged,
  nothing sent": the driver's USB byte count, the camera settings the driver holds, the emulated controller's
  received lines and laser/shutter/power state, the frame counters (sim), or the service's stats (tcp) are the same
  before and after;
- or a result: an empty batch gives an empty result of the right shape and dtype (and sends nothing); a strided,
  Fortran-ordered or read-only array gives exactly the result of its contiguous copy (the emulator runs with
  ``noise=0``, so results are deterministic and compared bit for bit: no tolerance is needed).

Huge sizes are declared without memory: ``n_components=10**12``, or a batch of 10**9 rows as a zero-stride
broadcast view. They must be refused from the shape alone; a slip would show as a MemoryError or a run that never
ends, not as a pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import dfa_client
import firmware_sim
import opu_driver
from dfa_client import FeedbackProjection, ternarize
from dfa_client import errors as dfa_errors
from opu_driver import errors as opu_errors
from opu_driver.calibration import (
    CalibrationPlan,
    CalibrationRecord,
    DriftMonitor,
    calibrate,
    estimate_matrix,
    measure_dark,
    measure_fidelity,
    measure_latency,
    measure_reference,
    measure_roi,
    render_report,
    tune_exposure,
)
from opu_driver.encoding.encoders import BinaryThreshold, BitPlaneEncoder, TernaryEncoder
from opu_driver.encoding.layouts import SplitLayout
from opu_driver.service import OpuService
from tests.support import small_sim

URL = small_sim("noise=0&seed=11")
NF, NC = 16, 32  # features and outputs used throughout: they fit the small device with room for a reference
N_MIRRORS = 96 * 64
N_PIXELS = 64 * 48
HUGE_BATCH = 10**9

OpuInvalid = opu_errors.InvalidInputError
OpuConfig = opu_errors.ConfigurationError
OpuUrl = opu_errors.UnsupportedUrlError
DfaInvalid = dfa_errors.InvalidInputError
DfaUrl = dfa_errors.UnsupportedUrlError


# ---------------------------------------------------------------------------------------------- inputs
def ternary(batch: int = 3, n: int = NF, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1, 2, (batch, n)).astype(np.float64)


def binary(batch: int = 3, n: int = NF, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2, (batch, n)).astype(np.uint8)


def with_value(value: float, n: int = NF) -> np.ndarray:
    E = ternary(2, n)
    E[1, 3] = value
    return E


def huge(n: int = NF, dtype: Any = np.float64) -> np.ndarray:
    """A (10**9, n) array that costs n values of memory: every row is the same (a zero-stride view)."""
    return np.broadcast_to(np.zeros(n, dtype=dtype), (HUGE_BATCH, n))


def ragged() -> list:
    return [[0, 1], [1]]


class _RaisingArray:
    """An object whose conversion to an array fails (a broken array-like of a user's library)."""

    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise RuntimeError("this array-like cannot be converted")


# Bad real-valued arrays (what every function taking errors or real data must refuse).
BAD_REAL = {
    "nan": lambda n=NF: with_value(np.nan, n),
    "inf": lambda n=NF: with_value(np.inf, n),
    "-inf": lambda n=NF: with_value(-np.inf, n),
    "3d": lambda n=NF: np.zeros((2, 2, n)),
    "0d": lambda n=NF: np.float64(1.0),
    "object": lambda n=NF: ternary(2, n).astype(object),
    "str": lambda n=NF: np.full((2, n), "1"),
    "complex": lambda n=NF: ternary(2, n).astype(np.complex128),
    "ragged": lambda n=NF: ragged(),
    "masked": lambda n=NF: np.ma.masked_array(ternary(2, n), mask=np.eye(2, n, dtype=bool)),
    "zero-width": lambda n=NF: np.zeros((2, 0)),
}


# Layouts of the strided, Fortran-ordered and read-only variants of a C-contiguous array.
def strided(A: np.ndarray) -> np.ndarray:
    wide = np.zeros((A.shape[0] * 2, A.shape[1] * 3), dtype=A.dtype)
    wide[::2, ::3] = A
    view = wide[::2, ::3]
    assert not view.flags.c_contiguous and not view.flags.f_contiguous
    return view


def fortran(A: np.ndarray) -> np.ndarray:
    F = np.asfortranarray(A)
    assert not F.flags.c_contiguous or A.shape[0] == 1
    return F


def read_only(A: np.ndarray) -> np.ndarray:
    R = A.copy()
    R.flags.writeable = False
    return R


def reversed_rows(A: np.ndarray) -> np.ndarray:
    """Negative strides: a view of a reversed copy, reversed back."""
    return A[::-1].copy()[::-1]


LAYOUTS = {"strided": strided, "fortran": fortran, "read-only": read_only, "negative-stride": reversed_rows}


# ---------------------------------------------------------------------------------------------- device state
def device_state(opu) -> tuple:
    """What "nothing sent, state unchanged" compares: bytes out on USB, the camera settings the driver holds,
    the emulated controller's received lines and its laser, shutter, power and trigger, frames and sequences run."""
    controller = opu.emulator.controller
    counters = opu.counters
    return (
        opu.link_counters.bytes_sent,
        opu.camera.settings,
        controller.lines_received,
        controller.laser_on,
        controller.shutter_open,
        controller.power_mw,
        controller.trigger_mode,
        counters.frames_sent,
        counters.sequences,
    )


@pytest.fixture(scope="module")
def opu():
    with opu_driver.open(URL) as device:
        device.linear_transform(ternary(), NC)  # the reference calibration, once, so later rows only compute
        yield device


@pytest.fixture(scope="module")
def service():
    svc = OpuService(URL, max_batch=64, hello_timeout_s=2.0, idle_timeout_s=30.0).start()
    yield svc
    svc.stop()


def tcp_url(svc: OpuService) -> str:
    host, port = svc.address
    return f"tcp://{host}:{port}"


# ---------------------------------------------------------------------------------------------- Opu rows
def _rows(table: dict[str, tuple[Callable, type]]) -> list:
    return [pytest.param(call, expected, id=name) for name, (call, expected) in table.items()]


OPU_ERRORS: dict[str, tuple[Callable[[Any], Any], type]] = {}

# Opu.transform: binary frames only.
for _name, _make in BAD_REAL.items():
    OPU_ERRORS[f"transform-{_name}"] = (lambda o, m=_make: o.transform(m(), NC), OpuInvalid)
OPU_ERRORS.update(
    {
        "transform-float-01": (lambda o: o.transform(binary().astype(np.float64), NC), OpuInvalid),
        "transform-value-2": (lambda o: o.transform(binary() * 2, NC), OpuInvalid),
        "transform-value--1": (lambda o: o.transform(-binary().astype(np.int8), NC), OpuInvalid),
        "transform-more-features-than-mirrors": (
            lambda o: o.transform(np.zeros((1, N_MIRRORS + 1), bool), NC),
            OpuInvalid,
        ),
        "transform-n_components-0": (lambda o: o.transform(binary(), 0), OpuInvalid),
        "transform-n_components--1": (lambda o: o.transform(binary(), -1), OpuInvalid),
        "transform-n_components-beyond-camera": (lambda o: o.transform(binary(), N_PIXELS + 1), OpuInvalid),
        "transform-n_components-1e12": (lambda o: o.transform(binary(), 10**12), OpuInvalid),
        "transform-n_components-float": (lambda o: o.transform(binary(), 32.0), OpuInvalid),
        "transform-n_components-nan": (lambda o: o.transform(binary(), math.nan), OpuInvalid),
        "transform-n_components-bool": (lambda o: o.transform(binary(), True), OpuInvalid),
        "transform-n_components-str": (lambda o: o.transform(binary(), "32"), OpuInvalid),
        "transform-huge-batch-bool": (lambda o: o.transform(huge(NF, bool), NC), OpuInvalid),
        "transform-huge-batch-uint8": (lambda o: o.transform(huge(NF, np.uint8), NC), OpuInvalid),
    }
)

# Opu.linear_transform: real errors.
for _name, _make in BAD_REAL.items():
    OPU_ERRORS[f"linear-{_name}"] = (lambda o, m=_make: o.linear_transform(m(), NC), OpuInvalid)
OPU_ERRORS.update(
    {
        "linear-n_components-0": (lambda o: o.linear_transform(ternary(), 0), OpuInvalid),
        "linear-n_components-1e12": (lambda o: o.linear_transform(ternary(), 10**12), OpuInvalid),
        "linear-n_components-bool": (lambda o: o.linear_transform(ternary(), True), OpuInvalid),
        "linear-scheme-unknown": (lambda o: o.linear_transform(ternary(), NC, scheme="one_frame"), OpuInvalid),
        "linear-scheme-none": (lambda o: o.linear_transform(ternary(), NC, scheme=None), OpuInvalid),
        "linear-n_bits-0": (lambda o: o.linear_transform(ternary(), NC, n_bits=0), OpuInvalid),
        "linear-n_bits-17": (lambda o: o.linear_transform(ternary(), NC, n_bits=17), OpuInvalid),
        "linear-n_bits-float": (lambda o: o.linear_transform(ternary(), NC, n_bits=4.0), OpuInvalid),
        "linear-n_bits-bool": (lambda o: o.linear_transform(ternary(), NC, n_bits=True), OpuInvalid),
        "linear-too-wide-for-reference": (lambda o: o.linear_transform(ternary(1, N_MIRRORS), NC), OpuInvalid),
        "linear-huge-batch": (lambda o: o.linear_transform(huge(), NC), OpuInvalid),
        # finite, but projections of such values overflow float32: refused, never returned as inf
        "linear-overflowing-values": (lambda o: o.linear_transform(with_value(1e308), NC), OpuInvalid),
        "linear-array-conversion-raises": (lambda o: o.linear_transform(_RaisingArray(), NC), OpuInvalid),
        "transform-array-conversion-raises": (lambda o: o.transform(_RaisingArray(), NC), OpuInvalid),
        "linear-huge-batch-nan": (
            lambda o: o.linear_transform(np.broadcast_to(np.full(NF, np.nan), (HUGE_BATCH, NF)), NC),
            OpuInvalid,
        ),
    }
)

# Opu.acquire: frames through a layout of the caller's choice.
OPU_ERRORS.update(
    {
        "acquire-layout-not-a-layout": (lambda o: o.acquire(binary(2, NF + 1), "lined", NC), OpuInvalid),
        "acquire-layout-other-dmd": (lambda o: o.acquire(binary(2, NF + 1), SplitLayout(NF, 128, 64), NC), OpuInvalid),
        "acquire-width-mismatch": (lambda o: o.acquire(binary(2, NF), SplitLayout(NF, 96, 64), NC), OpuInvalid),
        "acquire-nan": (lambda o: o.acquire(with_value(np.nan, NF + 1), SplitLayout(NF, 96, 64), NC), OpuInvalid),
        "acquire-float": (
            lambda o: o.acquire(binary(2, NF + 1).astype(float), SplitLayout(NF, 96, 64), NC),
            OpuInvalid,
        ),
        "acquire-n_components-1e12": (
            lambda o: o.acquire(binary(2, NF + 1), SplitLayout(NF, 96, 64), 10**12),
            OpuInvalid,
        ),
        "acquire-huge-batch": (lambda o: o.acquire(huge(NF + 1, bool), SplitLayout(NF, 96, 64), NC), OpuInvalid),
    }
)

# Opu.roi_for: the outputs' camera region (only computes).
OPU_ERRORS.update(
    {
        "roi_for-0": (lambda o: o.roi_for(0), OpuInvalid),
        "roi_for--5": (lambda o: o.roi_for(-5), OpuInvalid),
        "roi_for-beyond-camera": (lambda o: o.roi_for(N_PIXELS + 1), OpuInvalid),
        "roi_for-1e12": (lambda o: o.roi_for(10**12), OpuInvalid),
        "roi_for-float": (lambda o: o.roi_for(32.5), OpuInvalid),
        "roi_for-nan": (lambda o: o.roi_for(math.nan), OpuInvalid),
        "roi_for-str": (lambda o: o.roi_for("32"), OpuInvalid),
        "roi_for-bool": (lambda o: o.roi_for(True), OpuInvalid),
    }
)

# Calibration routines: arguments refused before anything is sent.
OPU_ERRORS.update(
    {
        "measure_dark-n_components-0": (lambda o: measure_dark(o, 0), OpuInvalid),
        "measure_dark-n_components-1e12": (lambda o: measure_dark(o, 10**12), OpuInvalid),
        "measure_dark-n_components-str": (lambda o: measure_dark(o, "32"), OpuInvalid),
        "measure_dark-n_frames-1": (lambda o: measure_dark(o, NC, n_frames=1), OpuInvalid),
        "measure_dark-n_frames-1e12": (lambda o: measure_dark(o, NC, n_frames=10**12), OpuInvalid),
        "measure_dark-method": (lambda o: measure_dark(o, NC, method="lid"), OpuInvalid),
        "measure_dark-hot_sigma-nan": (lambda o: measure_dark(o, NC, hot_sigma=math.nan), OpuInvalid),
        "measure_dark-hot_sigma-inf": (lambda o: measure_dark(o, NC, hot_sigma=math.inf), OpuInvalid),
        "measure_dark-hot_sigma-str": (lambda o: measure_dark(o, NC, hot_sigma="8"), OpuInvalid),
        "tune_exposure-n_features-0": (lambda o: tune_exposure(o, 0, NC), OpuInvalid),
        "tune_exposure-n_features-1e12": (lambda o: tune_exposure(o, 10**12, NC), OpuInvalid),
        "tune_exposure-n_components-1e12": (lambda o: tune_exposure(o, NF, 10**12), OpuInvalid),
        "tune_exposure-target-nan": (lambda o: tune_exposure(o, NF, NC, target_fraction=math.nan), OpuInvalid),
        "tune_exposure-saturated-inf": (
            lambda o: tune_exposure(o, NF, NC, max_saturated_fraction=math.inf),
            OpuInvalid,
        ),
        "tune_exposure-max_exposure-float": (lambda o: tune_exposure(o, NF, NC, max_exposure_us=100.0), OpuInvalid),
        "tune_exposure-layout-str": (lambda o: tune_exposure(o, NF, NC, layout="lined"), OpuInvalid),
        "tune_exposure-n_frames-0": (lambda o: tune_exposure(o, NF, NC, n_frames=0), OpuInvalid),
        "measure_latency-n_frames-str": (lambda o: measure_latency(o, n_frames="64"), OpuInvalid),
        "measure_latency-lag-ge-frames": (lambda o: measure_latency(o, n_frames=8, max_lag_frames=8), OpuInvalid),
        "measure_latency-n_features-1e12": (
            lambda o: measure_latency(o, n_features=10**12, n_components=NC),
            OpuInvalid,
        ),
        "measure_latency-n_components-1e12": (lambda o: measure_latency(o, n_components=10**12), OpuInvalid),
        "measure_latency-n_frames-1e12": (lambda o: measure_latency(o, n_frames=10**12, n_components=NC), OpuInvalid),
        "measure_latency-timeout-nan": (lambda o: measure_latency(o, n_components=NC, timeout_s=math.nan), OpuInvalid),
        "measure_roi-n_components-1e12": (lambda o: measure_roi(o, 10**12), OpuInvalid),
        "measure_roi-n_features-1": (lambda o: measure_roi(o, 1024, n_features=1), OpuInvalid),
        "measure_roi-n_features-1e12": (lambda o: measure_roi(o, 1024, n_features=10**12), OpuInvalid),
        "measure_roi-n_frames-1e12": (lambda o: measure_roi(o, 1024, n_frames=10**12), OpuInvalid),
        "measure_roi-seed--1": (lambda o: measure_roi(o, 1024, seed=-1), OpuInvalid),
        "measure_roi-too-few-rows": (lambda o: measure_roi(o, NC), OpuInvalid),
        "measure_reference-n_features-0": (lambda o: measure_reference(o, 0, NC), OpuInvalid),
        "measure_reference-n_features-1e12": (lambda o: measure_reference(o, 10**12, NC), OpuInvalid),
        "measure_reference-n_components-1e12": (lambda o: measure_reference(o, NF, 10**12), OpuInvalid),
        "measure_reference-n_frames-nan": (lambda o: measure_reference(o, NF, NC, n_frames=math.nan), OpuInvalid),
        "measure_reference-n_frames-1e12": (lambda o: measure_reference(o, NF, NC, n_frames=10**12), OpuInvalid),
        "measure_fidelity-n_features-1": (lambda o: measure_fidelity(o, 1, NC), OpuInvalid),
        "measure_fidelity-n_features-1e12": (lambda o: measure_fidelity(o, 10**12, NC), OpuInvalid),
        "measure_fidelity-scheme": (lambda o: measure_fidelity(o, NF, NC, schemes=("one_frame",)), OpuInvalid),
        "measure_fidelity-n_bits-17": (lambda o: measure_fidelity(o, NF, NC, n_bits=(17,)), OpuInvalid),
        "measure_fidelity-n_vectors-1": (lambda o: measure_fidelity(o, NF, NC, n_vectors=1), OpuInvalid),
        "measure_fidelity-n_vectors-1e12": (lambda o: measure_fidelity(o, NF, NC, n_vectors=10**12), OpuInvalid),
        "estimate_matrix-probes": (lambda o: estimate_matrix(o, NF, NC, probes="sobol"), OpuInvalid),
        "estimate_matrix-scheme": (lambda o: estimate_matrix(o, NF, NC, scheme="one_frame"), OpuInvalid),
        "estimate_matrix-n_features-1e12": (lambda o: estimate_matrix(o, 10**12, NC), OpuInvalid),
        "estimate_matrix-n_components-1e12": (lambda o: estimate_matrix(o, NF, 10**12), OpuInvalid),
        "estimate_matrix-n_probes-1e12": (
            lambda o: estimate_matrix(o, NF, NC, probes="random", n_probes=10**12),
            OpuInvalid,
        ),
        "estimate_matrix-n_holdout--1": (lambda o: estimate_matrix(o, NF, NC, n_holdout=-1), OpuInvalid),
        "estimate_matrix-n_holdout-1e12": (lambda o: estimate_matrix(o, NF, NC, n_holdout=10**12), OpuInvalid),
        "estimate_matrix-seed--1": (lambda o: estimate_matrix(o, NF, NC, seed=-1), OpuInvalid),
        "DriftMonitor-n_features-0": (lambda o: DriftMonitor(o, 0, NC), OpuInvalid),
        "DriftMonitor-n_features-1e12": (lambda o: DriftMonitor(o, 10**12, NC), OpuInvalid),
        "DriftMonitor-n_components-1e12": (lambda o: DriftMonitor(o, NF, 10**12), OpuInvalid),
        "DriftMonitor-n_probes-2": (lambda o: DriftMonitor(o, NF, NC, n_probes=2), OpuInvalid),
        "DriftMonitor-n_probes-1e12": (lambda o: DriftMonitor(o, NF, NC, n_probes=10**12), OpuInvalid),
        "DriftMonitor-threshold-nan": (lambda o: DriftMonitor(o, NF, NC, threshold=math.nan), OpuInvalid),
        "DriftMonitor-scheme": (lambda o: DriftMonitor(o, NF, NC, scheme="one_frame"), OpuInvalid),
        "DriftMonitor-interval-0": (lambda o: DriftMonitor(o, NF, NC, interval_steps=0), OpuInvalid),
        "DriftMonitor.from_arrays-nan-baseline": (
            lambda o: DriftMonitor.from_arrays(o, ternary(4, NF) + np.eye(4, NF), np.full((4, NC), np.nan), 0.9),
            OpuInvalid,
        ),
        "DriftMonitor.from_arrays-non-ternary-probes": (
            lambda o: DriftMonitor.from_arrays(o, np.full((4, NF), 2.0), np.ones((4, NC)), 0.9),
            OpuInvalid,
        ),
        "DriftMonitor.from_arrays-baseline-1e12-wide": (
            lambda o: DriftMonitor.from_arrays(o, np.ones((4, NF)), np.broadcast_to(np.ones(1), (4, 10**12)), 0.9),
            OpuInvalid,
        ),
        "calibrate-unknown-routine": (lambda o: calibrate(o, ["nope"], None), OpuInvalid),
        "calibrate-routines-str": (lambda o: calibrate(o, "dark", None), OpuInvalid),
        "calibrate-plan-too-many-components": (
            lambda o: calibrate(o, ["dark"], None, CalibrationPlan(n_features=NF, n_components=10**12)),
            OpuInvalid,
        ),
        "calibrate-plan-not-a-plan": (lambda o: calibrate(o, ["dark"], None, {"n_features": NF}), OpuInvalid),
    }
)


@pytest.mark.parametrize(("call", "expected"), _rows(OPU_ERRORS))
def test_opu_entry_points_refuse_bad_input_before_sending(opu, call, expected) -> None:
    before = device_state(opu)
    with pytest.raises(expected):
        call(opu)
    assert device_state(opu) == before, "bad input changed the device or sent bytes"
    assert not opu.closed


# ---------------------------------------------------------------------------------------------- opu_driver.open
OPEN_ERRORS = {
    "open-url-int": (lambda: opu_driver.open(123), OpuUrl),
    "open-url-none": (lambda: opu_driver.open(None), OpuUrl),
    "open-url-empty": (lambda: opu_driver.open(""), OpuUrl),
    "open-url-no-scheme": (lambda: opu_driver.open("seed=3"), OpuUrl),
    "open-url-one-slash": (lambda: opu_driver.open("sim:/?seed=3"), OpuUrl),
    "open-url-unknown-scheme": (lambda: opu_driver.open("ftp://host/opu"), OpuUrl),
    "open-url-tcp-scheme": (lambda: opu_driver.open("tcp://127.0.0.1:1"), OpuUrl),
    "open-url-sim-path": (lambda: opu_driver.open("sim://name/path"), OpuUrl),
    "open-url-sim-name-and-options": (lambda: opu_driver.open("sim://name?seed=3"), OpuUrl),
    "open-url-sim-malformed-query": (lambda: opu_driver.open("sim://?seed"), OpuUrl),
    "open-url-sim-unknown-option": (lambda: opu_driver.open("sim://?colour=blue"), OpuConfig),
    "open-url-sim-option-twice": (lambda: opu_driver.open("sim://?seed=1&seed=2"), OpuConfig),
    "open-url-sim-bad-seed": (lambda: opu_driver.open("sim://?seed=abc"), OpuConfig),
    "open-url-sim-full-width-digit": (lambda: opu_driver.open("sim://?seed=\uff11"), OpuConfig),
    "open-url-sim-dmd-below-one-cell": (lambda: opu_driver.open("sim://?dmd=1x1"), OpuConfig),
    "open-url-sim-huge-dmd": (lambda: opu_driver.open("sim://?dmd=1000000000x1000000000"), OpuConfig),
    "open-url-sim-nan-noise": (lambda: opu_driver.open(small_sim("noise=nan")), OpuConfig),
    "open-url-sim-unknown-name": (lambda: opu_driver.open("sim://no-such-device"), opu_errors.DeviceNotFoundError),
    "open-url-usb-bad-ids": (lambda: opu_driver.open("usb://zz:yy?port=/dev/null"), OpuUrl),
    "open-url-usb-full-width-ids": (lambda: opu_driver.open("usb://\uff11209:4f50?port=/dev/null"), OpuUrl),
    "open-url-usb-three-ids": (lambda: opu_driver.open("usb://1209:4f50:1?port=/dev/null"), OpuUrl),
    "open-url-usb-unknown-option": (lambda: opu_driver.open("usb://1209:4f50?baud=9600"), OpuUrl),
    "open-url-usb-no-port-no-serial": (lambda: opu_driver.open("usb://1209:4f50"), OpuConfig),
    "open-setting-unknown": (lambda: opu_driver.open(URL, exposure=100), OpuConfig),
    "open-setting-exposure-nan": (lambda: opu_driver.open(URL, exposure_us=math.nan), OpuConfig),
    "open-setting-exposure-float": (lambda: opu_driver.open(URL, exposure_us=100.0), OpuConfig),
    "open-setting-exposure-1e12": (lambda: opu_driver.open(URL, exposure_us=10**12), OpuConfig),
    "open-setting-gain-inf": (lambda: opu_driver.open(URL, gain=math.inf), OpuConfig),
    "open-setting-laser-nan": (lambda: opu_driver.open(URL, laser_power_mw=math.nan), OpuConfig),
    "open-setting-timeout-0": (lambda: opu_driver.open(URL, timeout_s=0), OpuConfig),
    "open-setting-timeout-inf": (lambda: opu_driver.open(URL, timeout_s=math.inf), OpuConfig),
    "open-setting-timeout-bool": (lambda: opu_driver.open(URL, timeout_s=True), OpuConfig),
    "open-setting-layout": (lambda: opu_driver.open(URL, layout="spiral"), OpuConfig),
    "open-setting-frame_mode": (lambda: opu_driver.open(URL, frame_mode="video"), OpuConfig),
    "open-setting-pixel_format": (lambda: opu_driver.open(URL, pixel_format="RGB8"), OpuConfig),
    "open-setting-pixel_format-int": (lambda: opu_driver.open(URL, pixel_format=8), OpuConfig),
    "open-setting-chunk_frames-0": (lambda: opu_driver.open(URL, chunk_frames=0), OpuConfig),
    "open-setting-max_lag-bool": (lambda: opu_driver.open(URL, max_lag_frames=True), OpuConfig),
    "open-setting-max_lag-1e12": (lambda: opu_driver.open(URL, max_lag_frames=10**12), OpuConfig),
    "open-setting-calibration-int": (lambda: opu_driver.open(URL, calibration=3), OpuConfig),
    "open-setting-max-age-nan": (lambda: opu_driver.open(URL, calibration_max_age_s=math.nan), OpuConfig),
    "open-setting-drift_check-str": (lambda: opu_driver.open(URL, drift_check="no"), OpuConfig),
}


@pytest.mark.parametrize(("call", "expected"), _rows(OPEN_ERRORS))
def test_open_refuses_bad_urls_and_settings_before_any_device_exists(call, expected) -> None:
    before = [device.name for device in firmware_sim.list_devices()]
    with pytest.raises(expected):
        call()
    assert [device.name for device in firmware_sim.list_devices()] == before, "an emulator was left behind"


# ---------------------------------------------------------------------------------------------- dfa_client.connect
def connect_errors(tcp: str) -> dict:
    c = dfa_client.connect
    return {
        "url-int": (lambda: c(123, NC), DfaUrl),
        "url-none": (lambda: c(None, NC), DfaUrl),
        "url-bytes": (lambda: c(b"digital://", NC), DfaUrl),
        "url-empty": (lambda: c("", NC), DfaUrl),
        "url-unknown-scheme": (lambda: c("http://127.0.0.1:80", NC), DfaUrl),
        "url-bad-ipv6": (lambda: c("tcp://[::1:80", NC), DfaUrl),
        "digital-host": (lambda: c("digital://host?seed=1", NC), DfaUrl),
        "digital-path": (lambda: c("digital:///x", NC), DfaUrl),
        "digital-unknown-option": (lambda: c("digital://?seed=1&colour=blue", NC), DfaUrl),
        "digital-seed-negative": (lambda: c("digital://?seed=-1", NC), DfaUrl),
        "digital-seed-text": (lambda: c("digital://?seed=abc", NC), DfaUrl),
        "digital-seed-option-negative": (lambda: c("digital://", NC, seed=-1), DfaInvalid),
        "digital-seed-option-float": (lambda: c("digital://", NC, seed=1.5), DfaInvalid),
        "tcp-no-port": (lambda: c("tcp://127.0.0.1", NC), DfaUrl),
        "tcp-port-0": (lambda: c("tcp://127.0.0.1:0", NC), DfaUrl),
        "tcp-port-too-big": (lambda: c("tcp://127.0.0.1:99999", NC), DfaUrl),
        "tcp-port-text": (lambda: c("tcp://127.0.0.1:http", NC), DfaUrl),
        "tcp-no-host": (lambda: c("tcp://:5000", NC), DfaUrl),
        "tcp-userinfo": (lambda: c(tcp.replace("tcp://", "tcp://user:pw@"), NC), DfaUrl),
        "tcp-path": (lambda: c(tcp + "/projector", NC), DfaUrl),
        "tcp-fragment": (lambda: c(tcp + "#x", NC), DfaUrl),
        "tcp-unknown-option": (lambda: c(tcp + "?colour=blue", NC), DfaUrl),
        "tcp-token-not-str": (lambda: c(tcp, NC, token=123), DfaInvalid),
        "tcp-timeout-nan": (lambda: c(tcp, NC, timeout_s=math.nan), DfaInvalid),
        "tcp-timeout-0": (lambda: c(tcp, NC, timeout_s=0), DfaInvalid),
        "tcp-retries--1": (lambda: c(tcp, NC, retries=-1), DfaInvalid),
        "tcp-backoff-inf": (lambda: c(tcp, NC, backoff_s=math.inf), DfaInvalid),
        "tcp-unknown-option-kw": (lambda: c(tcp, NC, colour="blue"), TypeError),
        "sim-path": (lambda: c("sim://name/path", NC), DfaInvalid),
        "sim-unknown-option": (lambda: c("sim://?colour=blue", NC), DfaInvalid),
        "sim-bad-setting": (lambda: c(URL, NC, exposure_us=math.nan), DfaInvalid),
        "usb-bad-ids": (lambda: c("usb://zz:yy?port=/dev/null", NC), DfaInvalid),
        "sim-n_components-beyond-camera": (lambda: c(URL, N_PIXELS + 1), DfaInvalid),
        **{
            f"{scheme}-{name}": (lambda u=url, kw=kw: c(u, **kw), DfaInvalid)
            for scheme, url in (("digital", "digital://?seed=1"), ("tcp", tcp), ("sim", URL))
            for name, kw in (
                ("n_components-0", {"n_components": 0}),
                ("n_components-1e12", {"n_components": 10**12}),
                ("n_components-bool", {"n_components": True}),
                ("n_components-float", {"n_components": 32.0}),
                ("n_components-str", {"n_components": "32"}),
                ("n_features-0", {"n_components": NC, "n_features": 0}),
                ("n_features-1e12", {"n_components": NC, "n_features": 10**12}),
                ("scheme", {"n_components": NC, "scheme": "one_frame"}),
                ("n_bits-0", {"n_components": NC, "n_bits": 0}),
                ("n_bits-nan", {"n_components": NC, "n_bits": math.nan}),
                ("max_batch-0", {"n_components": NC, "max_batch": 0}),
                ("max_batch-float", {"n_components": NC, "max_batch": 10.0}),
            )
        },
    }


CONNECT_IDS = sorted(connect_errors("tcp://127.0.0.1:1"))


@pytest.mark.parametrize("case", CONNECT_IDS)
def test_connect_refuses_bad_urls_and_options_before_sending(service, case: str) -> None:
    call, expected = connect_errors(tcp_url(service))[case]
    before = service.stats()
    devices = [device.name for device in firmware_sim.list_devices()]
    with pytest.raises(expected):
        call()
    after = service.stats()
    assert (after.requests, after.vectors, after.device_calls) == (before.requests, before.vectors, before.device_calls)
    assert [device.name for device in firmware_sim.list_devices()] == devices, "an emulator was left behind"


# ---------------------------------------------------------------------------------------------- Projector.project
@pytest.fixture(scope="module")
def projectors(service, opu):
    """One projector per backend, n_features fixed; the sim one shares the module's Opu (its state is watched)."""
    made = {
        "digital": dfa_client.connect("digital://?seed=4", NC, n_features=NF, max_batch=64),
        "sim": dfa_client.connect(URL, NC, n_features=NF, max_batch=64, opu=opu),
        "tcp": dfa_client.connect(tcp_url(service), NC, n_features=NF),
    }
    yield made
    for projector in made.values():
        projector.close()


def backend_state(name: str, projector, service: OpuService, opu) -> tuple:
    if name == "sim":
        return device_state(opu)
    if name == "tcp":
        stats = service.stats()
        return stats.requests, stats.vectors, stats.device_calls, stats.request_errors, projector.vectors_projected
    return (projector.vectors_projected,)


PROJECT_ERRORS = {
    **{name: (lambda m=make: m(), DfaInvalid) for name, make in BAD_REAL.items()},
    "wrong-width": (lambda: ternary(2, NF + 1), DfaInvalid),
    "wrong-width-1d": (lambda: ternary(1, NF - 1)[0], DfaInvalid),
    "over-max_batch": (lambda: ternary(65, NF), DfaInvalid),
    "huge-batch": (lambda: huge(), DfaInvalid),
    "huge-batch-bool": (lambda: huge(NF, bool), DfaInvalid),
    "huge-width": (lambda: np.broadcast_to(np.zeros(1), (1, 10**12)), DfaInvalid),
    "none": (lambda: None, DfaInvalid),
    "string": (lambda: "0.5", DfaInvalid),
}


@pytest.mark.parametrize("backend", ["digital", "sim", "tcp"])
@pytest.mark.parametrize(("make", "expected"), _rows(PROJECT_ERRORS))
def test_projectors_refuse_bad_errors_before_sending(projectors, service, opu, backend, make, expected) -> None:
    projector = projectors[backend]
    before = backend_state(backend, projector, service, opu)
    with pytest.raises(expected):
        projector.project(make())
    assert backend_state(backend, projector, service, opu) == before, "bad errors reached the backend"
    assert not projector.closed


@pytest.mark.parametrize("backend", ["digital", "sim", "tcp"])
def test_projectors_take_empty_batches_without_sending(projectors, service, opu, backend) -> None:
    projector = projectors[backend]
    before = backend_state(backend, projector, service, opu)
    for empty in (np.zeros((0, NF)), np.zeros((0, NF), dtype=np.int8), np.zeros((0, NF), dtype=bool)):
        out = projector.project(empty)
        assert out.shape == (0, NC) and out.dtype == np.float32
    assert backend_state(backend, projector, service, opu) == before


@pytest.mark.parametrize("backend", ["digital", "sim", "tcp"])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_projectors_give_the_same_result_for_any_memory_layout(projectors, backend, layout) -> None:
    projector = projectors[backend]
    E = ternary(4, NF, seed=5)
    E[1] *= 0.37  # one row off the ternary grid: the real-valued (bit-plane) path too
    expected = projector.project(E)
    np.testing.assert_array_equal(projector.project(LAYOUTS[layout](E)), expected)


@pytest.mark.parametrize("backend", ["digital", "sim", "tcp"])
def test_projectors_take_bool_and_integer_errors_as_numbers(projectors, backend) -> None:
    projector = projectors[backend]
    E = ternary(3, NF, seed=6)
    expected = projector.project(E)
    np.testing.assert_array_equal(projector.project(E.astype(np.int8)), expected)
    np.testing.assert_array_equal(projector.project(E > 0), projector.project((E > 0).astype(np.float64)))


# ---------------------------------------------------------------------------------------------- Opu: results
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("entry", ["transform", "linear_transform", "acquire"])
def test_opu_gives_the_same_result_for_any_memory_layout(opu, entry, layout) -> None:
    if entry == "linear_transform":
        E = ternary(3, NF, seed=7)
        E[2] *= 0.61
        call = lambda A: opu.linear_transform(A, NC)
    elif entry == "transform":
        E = binary(3, NF, seed=7)
        call = lambda A: opu.transform(A, NC)
    else:
        E = binary(3, NF + 1, seed=7)
        split = SplitLayout(NF, 96, 64)
        call = lambda A: opu.acquire(A, split, NC)
    np.testing.assert_array_equal(call(LAYOUTS[layout](E)), call(E))


def test_opu_takes_bool_frames_and_bool_errors(opu) -> None:
    X = binary(3, NF, seed=8)
    np.testing.assert_array_equal(opu.transform(X.astype(bool), NC), opu.transform(X, NC))
    np.testing.assert_array_equal(
        opu.linear_transform(X.astype(bool), NC), opu.linear_transform(X.astype(np.float64), NC)
    )


@pytest.mark.parametrize(
    ("entry", "shape", "dtype"),
    [
        pytest.param("transform", (0, NF), np.uint8, id="transform"),
        pytest.param("transform-bool", (0, NF), bool, id="transform-bool"),
        pytest.param("linear_transform", (0, NF), np.float64, id="linear_transform"),
        pytest.param("linear_transform-int", (0, NF), np.int8, id="linear_transform-int"),
        pytest.param("acquire", (0, NF + 1), np.uint8, id="acquire"),
    ],
)
def test_opu_empty_batches_return_empty_and_send_nothing(opu, entry, shape, dtype) -> None:
    before = device_state(opu)
    empty = np.zeros(shape, dtype=dtype)
    if entry.startswith("transform"):
        out = opu.transform(empty, NC)
        assert out.shape == (0, NC) and out.dtype == np.uint8  # the sim's default MONO8
    elif entry.startswith("linear"):
        out = opu.linear_transform(empty, NC)
        assert out.shape == (0, NC) and out.dtype == np.float32
    else:
        out = opu.acquire(empty, SplitLayout(NF, 96, 64), NC)
        assert out.shape == (0, NC)
    assert device_state(opu) == before


# ---------------------------------------------------------------------------------------------- pure functions
def _fitted(encoder, n: int = NF):
    return encoder.fit(ternary(4, n, seed=9) * 0.5)


PURE_ERRORS: dict[str, tuple[Callable[[], Any], type]] = {}
for _enc_name, _make_enc in (
    ("BinaryThreshold", BinaryThreshold),
    ("TernaryEncoder", TernaryEncoder),
    ("BitPlaneEncoder", BitPlaneEncoder),
):
    for _name, _make in BAD_REAL.items():
        if _name == "zero-width":
            continue
        PURE_ERRORS[f"{_enc_name}.fit-{_name}"] = (lambda e=_make_enc, m=_make: e().fit(m()), OpuInvalid)
        PURE_ERRORS[f"{_enc_name}.transform-{_name}"] = (
            lambda e=_make_enc, m=_make: _fitted(e()).transform(m()),
            OpuInvalid,
        )
    PURE_ERRORS[f"{_enc_name}.fit-zero-width"] = (lambda e=_make_enc: e().fit(np.zeros((2, 0))), OpuInvalid)
    PURE_ERRORS[f"{_enc_name}.transform-wrong-width"] = (
        lambda e=_make_enc: _fitted(e()).transform(ternary(2, NF + 1)),
        OpuInvalid,
    )
    PURE_ERRORS[f"{_enc_name}.transform-unfitted"] = (lambda e=_make_enc: e().transform(ternary()), OpuConfig)
    PURE_ERRORS[f"{_enc_name}.transform-chunk_rows-0"] = (
        lambda e=_make_enc: _fitted(e()).transform(ternary(), chunk_rows=0),
        OpuConfig,
    )
PURE_ERRORS.update(
    {
        "BinaryThreshold-threshold-nan": (lambda: BinaryThreshold(math.nan), OpuConfig),
        "BinaryThreshold-threshold-str": (lambda: BinaryThreshold("high"), OpuConfig),
        "TernaryEncoder-threshold-negative": (lambda: TernaryEncoder(threshold=-1.0), OpuConfig),
        "TernaryEncoder-threshold-inf": (lambda: TernaryEncoder(threshold=math.inf), OpuConfig),
        "TernaryEncoder-rule": (lambda: TernaryEncoder(rule="median"), OpuConfig),
        "TernaryEncoder-value-nan": (lambda: TernaryEncoder(value=math.nan), OpuConfig),
        "TernaryEncoder-fit-empty-no-threshold": (lambda: TernaryEncoder().fit(np.zeros((0, NF))), OpuInvalid),
        "BitPlaneEncoder-n_bits-0": (lambda: BitPlaneEncoder(0), OpuConfig),
        "BitPlaneEncoder-n_bits-17": (lambda: BitPlaneEncoder(17), OpuConfig),
        "BitPlaneEncoder-n_bits-float": (lambda: BitPlaneEncoder(4.0), OpuConfig),
        "BitPlaneEncoder-n_bits-bool": (lambda: BitPlaneEncoder(True), OpuConfig),
        "BitPlaneEncoder-fit-empty": (lambda: BitPlaneEncoder().fit(np.zeros((0, NF))), OpuInvalid),
        "BitPlaneEncoder-out-wrong-shape": (
            lambda: _fitted(BitPlaneEncoder(2)).transform(ternary(), out=np.zeros((2, 2, 3, NF + 1), np.uint8)),
            OpuInvalid,
        ),
        "BitPlaneEncoder-out-read-only": (
            lambda: _fitted(BitPlaneEncoder(2)).transform(ternary(), out=read_only(np.zeros((2, 2, 3, NF), np.uint8))),
            OpuInvalid,
        ),
        # ternarize (pure; no batch limit of its own: it works on what fits in memory)
        **{f"ternarize-{name}": (lambda m=make: ternarize(m()), DfaInvalid) for name, make in BAD_REAL.items()},
        "ternarize-threshold-0": (lambda: ternarize(ternary(), 0.0), DfaInvalid),
        "ternarize-threshold-above-1-max-rule": (lambda: ternarize(ternary(), 1.5), DfaInvalid),
        "ternarize-threshold-nan": (lambda: ternarize(ternary(), math.nan), DfaInvalid),
        "ternarize-threshold-inf-absolute": (lambda: ternarize(ternary(), math.inf, "absolute"), DfaInvalid),
        "ternarize-threshold-bool": (lambda: ternarize(ternary(), True), DfaInvalid),
        "ternarize-rule": (lambda: ternarize(ternary(), 0.3, "median"), DfaInvalid),
        # CalibrationPlan and render_report (no device)
        "CalibrationPlan-n_features-0": (lambda: CalibrationPlan(n_features=0), OpuInvalid),
        "CalibrationPlan-n_components-float": (lambda: CalibrationPlan(n_components=32.0), OpuInvalid),
        "CalibrationPlan-dark_frames-bool": (lambda: CalibrationPlan(dark_frames=True), OpuInvalid),
        "CalibrationPlan-dark_method": (lambda: CalibrationPlan(dark_method="lid"), OpuInvalid),
        "CalibrationPlan-matrix_probes": (lambda: CalibrationPlan(matrix_probes="sobol"), OpuInvalid),
        "CalibrationPlan-saturated-nan": (lambda: CalibrationPlan(max_saturated_fraction=math.nan), OpuInvalid),
        "CalibrationPlan-saturated-str": (lambda: CalibrationPlan(max_saturated_fraction="0.001"), OpuInvalid),
        "render_report-not-a-record": (lambda: render_report({"dark": {}}, "report.png"), OpuInvalid),
        "render_report-nothing-to-plot": (
            lambda: render_report(CalibrationRecord("m", "s", "1.0"), "r.png"),
            OpuInvalid,
        ),
        "render_report-suffix": (lambda: render_report(_dark_record(), "report.txt"), OpuInvalid),
        "render_report-dpi-0": (lambda: render_report(_dark_record(), "report.png", dpi=0), OpuInvalid),
        "render_report-dpi-float": (lambda: render_report(_dark_record(), "report.png", dpi=120.0), OpuInvalid),
        "render_report-title-int": (lambda: render_report(_dark_record(), "report.png", title=3), OpuInvalid),
        # OpuService: limits and bind checked before the device is opened
        "OpuService-max_batch-0": (lambda: OpuService(URL, max_batch=0), OpuConfig),
        "OpuService-max_batch-float": (lambda: OpuService(URL, max_batch=64.0), OpuConfig),
        "OpuService-max_batch-bool": (lambda: OpuService(URL, max_batch=True), OpuConfig),
        "OpuService-max_message_bytes--1": (lambda: OpuService(URL, max_message_bytes=-1), OpuConfig),
        "OpuService-timeout-nan": (lambda: OpuService(URL, request_timeout_s=math.nan), OpuConfig),
        "OpuService-timeout-inf": (lambda: OpuService(URL, hello_timeout_s=math.inf), OpuConfig),
        "OpuService-unknown-limit": (lambda: OpuService(URL, max_speed=3), OpuConfig),
        "OpuService-bind-not-tuple": (lambda: OpuService(URL, bind="127.0.0.1:0"), OpuConfig),
        "OpuService-bind-port-too-big": (lambda: OpuService(URL, bind=("127.0.0.1", 70000)), OpuConfig),
        "OpuService-bind-public-no-token": (lambda: OpuService(URL, bind=("0.0.0.0", 0)), OpuConfig),
        "OpuService-token-empty": (lambda: OpuService(URL, token="  "), OpuConfig),
        "OpuService-token-bytes": (lambda: OpuService(URL, token=b"secret"), OpuConfig),
    }
)


def _dark_record() -> CalibrationRecord:
    """A record a report can draw (one dark map), built without a device."""
    return CalibrationRecord(
        "m", "s", "1.0", results={"dark": {"mean_dn": 1.0}}, arrays={"dark/mean_dn": np.ones((4, 8), dtype=np.float32)}
    )


@pytest.mark.parametrize(("call", "expected"), _rows(PURE_ERRORS))
def test_pure_entry_points_refuse_bad_input(call, expected, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # a report that should not have been drawn would land here
    devices = [device.name for device in firmware_sim.list_devices()]
    with pytest.raises(expected):
        call()
    assert not list(tmp_path.iterdir()), "a refused call wrote a file"
    assert [device.name for device in firmware_sim.list_devices()] == devices, "a device was opened"


FEEDBACK_ERRORS = {
    "layer_sizes-empty": (lambda p: FeedbackProjection(p, []), DfaInvalid),
    "layer_sizes-str": (lambda p: FeedbackProjection(p, "8"), DfaInvalid),
    "layer_sizes-zero": (lambda p: FeedbackProjection(p, [8, 0]), DfaInvalid),
    "layer_sizes-float": (lambda p: FeedbackProjection(p, [8.0]), DfaInvalid),
    "layer_sizes-too-many-outputs": (lambda p: FeedbackProjection(p, [NC, 1]), DfaInvalid),
    "scale-nan": (lambda p: FeedbackProjection(p, [8], scale=math.nan), DfaInvalid),
    "scale-rule": (lambda p: FeedbackProjection(p, [8], scale="depth"), DfaInvalid),
    "scale-count": (lambda p: FeedbackProjection(p, [8, 8], scale=[1.0]), DfaInvalid),
    "encoding": (lambda p: FeedbackProjection(p, [8], encoding="binary"), DfaInvalid),
    "threshold-nan": (lambda p: FeedbackProjection(p, [8], encoding="ternary", threshold=math.nan), DfaInvalid),
    "not-a-projector": (lambda p: FeedbackProjection(object(), [8]), DfaInvalid),
    **{
        f"project-{name}": (lambda p, m=make: FeedbackProjection(p, [8, 8]).project(m()), DfaInvalid)
        for name, make in BAD_REAL.items()
    },
    **{
        f"project-ternary-{name}": (
            lambda p, m=make: FeedbackProjection(p, [8], encoding="ternary").project(m()),
            DfaInvalid,
        )
        for name, make in BAD_REAL.items()
    },
    "project-wrong-width": (lambda p: FeedbackProjection(p, [8]).project(ternary(2, NF + 1)), DfaInvalid),
    "project-huge-batch": (lambda p: FeedbackProjection(p, [8]).project(huge()), DfaInvalid),
    "project-ternary-huge-batch": (
        lambda p: FeedbackProjection(p, [8], encoding="ternary").project(huge()),
        DfaInvalid,
    ),
}


@pytest.mark.parametrize("backend", ["digital", "tcp"])
@pytest.mark.parametrize(("call", "expected"), _rows(FEEDBACK_ERRORS))
def test_feedback_projection_refuses_bad_input_before_sending(
    projectors, service, opu, backend, call, expected
) -> None:
    projector = projectors[backend]
    before = backend_state(backend, projector, service, opu)
    with pytest.raises(expected):
        call(projector)
    assert backend_state(backend, projector, service, opu) == before


# ---------------------------------------------------------------------------------------------- pure: results
ENCODERS = {
    "BinaryThreshold": lambda: BinaryThreshold(0.1),
    "TernaryEncoder": lambda: TernaryEncoder(0.2),
    "BitPlaneEncoder": lambda: BitPlaneEncoder(3),
}


def _encoded(encoder, X: np.ndarray) -> np.ndarray:
    out = encoder.transform(X)
    return np.stack([out.plus, out.minus]) if hasattr(out, "plus") else np.asarray(out)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_encoders_give_the_same_result_for_any_memory_layout(name, layout) -> None:
    X = np.random.default_rng(10).normal(size=(5, NF))
    reference = _encoded(ENCODERS[name]().fit(X), X)
    fitted = ENCODERS[name]().fit(LAYOUTS[layout](X))
    np.testing.assert_array_equal(_encoded(fitted, LAYOUTS[layout](X)), reference)
    Xi = np.random.default_rng(11).integers(-3, 4, (5, NF)).astype(np.int16)  # the lookup-table path
    np.testing.assert_array_equal(
        _encoded(ENCODERS[name]().fit(Xi), LAYOUTS[layout](Xi)), _encoded(ENCODERS[name]().fit(Xi), Xi)
    )


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_encoders_take_empty_batches_and_bool(name) -> None:
    encoder = ENCODERS[name]().fit(ternary(3))
    empty = _encoded(encoder, np.zeros((0, NF)))
    assert empty.size == 0 and empty.shape[-1] == NF and empty.shape[-2] == 0
    X = ternary(3) > 0
    np.testing.assert_array_equal(_encoded(encoder, X), _encoded(encoder, X.astype(np.float64)))


def test_ternarize_layouts_empty_and_bool() -> None:
    E = np.random.default_rng(12).normal(size=(4, NF))
    for make in LAYOUTS.values():
        np.testing.assert_array_equal(ternarize(make(E)), ternarize(E))
    out = ternarize(np.zeros((0, NF)))
    assert out.shape == (0, NF) and out.dtype == np.int8
    np.testing.assert_array_equal(ternarize(E > 0), ternarize((E > 0).astype(np.float64)))


def test_feedback_projection_layouts_and_empty_batches(projectors) -> None:
    feedback = FeedbackProjection(projectors["digital"], [8, 8], encoding="ternary")
    E = np.random.default_rng(13).normal(size=(4, NF))
    expected = feedback.project(E)
    for make in LAYOUTS.values():
        np.testing.assert_array_equal(feedback.project(make(E)), expected)
    assert feedback.project(np.zeros((0, NF))).shape == (0, 16)
