"""The ALP backend against a fake ALP library compiled from C in the test session.

The driver loads the fake as it would load Vialux's library; the test side drives the same library image through
its fake-only exports (geometry, faults, the display hook) and checks what the fake saw: calls, settings and the
mirrors' state of every picture shown.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cffi
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_sim.errors import SimBuildError
from firmware_sim.lab.fake_alp import FAKE_FUNCTIONS, FakeAlpLibrary, build_fake_alp
from opu_driver.devices.lab.alp import ALP, ALP_CDEF, ALP_ERRORS, AlpDmd, AlpSequenceData, pack_topdown
from opu_driver.errors import (
    CommunicationTimeoutError,
    DeviceError,
    DeviceNotFoundError,
    DeviceRefusedError,
    InvalidInputError,
    LibraryLoadError,
)

LP64 = ctypes.sizeof(ctypes.c_long) == 8


@pytest.fixture(scope="session")
def fake_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fake_alp(tmp_path_factory.mktemp("fake-alp-cache"))


@pytest.fixture
def fake(fake_path: Path) -> Iterator[FakeAlpLibrary]:
    library = FakeAlpLibrary(fake_path)
    library.reset()
    library.configure(width=96, height=64, serial=4711, min_picture_time_us=50, memory_pictures=64)
    yield library
    assert library.callback_errors == []
    library.reset()


@pytest.fixture
def dmd(fake: FakeAlpLibrary, fake_path: Path) -> Iterator[AlpDmd]:
    device = AlpDmd(fake_path)
    device.open()
    yield device
    device.close()


@pytest.fixture
def raw_alp(fake_path: Path) -> Any:
    """The fake's ALP calls through the driver's own declarations, to exercise the fake's rules directly."""
    ffi = cffi.FFI()
    ffi.cdef(ALP_CDEF, packed=True)
    return ffi, ffi.dlopen(str(fake_path))


def random_raw(rng: np.random.Generator, n: int, width: int, height: int) -> np.ndarray:
    pictures = rng.integers(0, 2, size=(n, height * width), dtype=np.uint8)
    return np.packbits(pictures, axis=1)


def record_display(fake: FakeAlpLibrary) -> list[tuple[np.ndarray, int, int]]:
    shown: list[tuple[np.ndarray, int, int]] = []
    fake.on_display(lambda picture, index, time_us: shown.append((picture, index, time_us)))
    return shown


# --------------------------------------------------------------------------------------------- platform types
def test_long_and_alp_id_have_the_platform_c_widths() -> None:
    ffi = cffi.FFI()
    ffi.cdef(ALP_CDEF, packed=True)
    assert ffi.sizeof("long") == ctypes.sizeof(ctypes.c_long)
    assert ffi.sizeof("ALP_ID") == ctypes.sizeof(ctypes.c_ulong)
    assert ffi.sizeof("tAlpProjProgress") == 9 * ctypes.sizeof(ctypes.c_ulong)
    assert ffi.sizeof("long") == (4 if sys.platform == "win32" else 8 if sys.maxsize > 2**32 else 4)


def test_ids_and_values_wider_than_32_bits_pass_through(fake: FakeAlpLibrary, fake_path: Path) -> None:
    base = 2**40 + 17 if LP64 else 2**31 + 17
    serial = 2**33 + 5 if LP64 else 2**31 - 5
    fake.reset()
    fake.configure(width=96, height=64, serial=serial, min_picture_time_us=50, memory_pictures=64)
    fake.set_id_base(base)
    with AlpDmd(fake_path) as device:
        info = device.open()  # already open: the same info
        assert info.serial_number == str(serial)
        device.load(device.prepare(random_raw(np.random.default_rng(1), 2, 96, 64)), 2, 100)
        device.play()
        device.wait(1.0)
        assert device.progress() == 2
        assert fake.last_started_sequence() > base


@pytest.mark.skipif(not LP64, reason="only an LP64 platform has a long wider than an int")
def test_a_32_bit_id_declaration_would_be_caught_by_the_fake(fake: FakeAlpLibrary, fake_path: Path) -> None:
    # The negative control of the test above: an id cut to 32 bits is not one the fake handed out.
    fake.set_id_base(2**40)
    ffi = cffi.FFI()
    ffi.cdef(
        "long AlpDevAlloc(long, long, unsigned long *); long AlpDevFree(unsigned long);"
        "long AlpDevInquire(unsigned int DeviceId, long InquireType, long *UserVarPtr);"
    )
    lib = ffi.dlopen(str(fake_path))
    device = ffi.new("unsigned long *")
    assert lib.AlpDevAlloc(0, 0, device) == 0
    value = ffi.new("long *")
    assert lib.AlpDevInquire(device[0] & 0xFFFFFFFF, ALP.DEV_DISPLAY_WIDTH, value) == 1003
    assert lib.AlpDevFree(device[0]) == 0


# --------------------------------------------------------------------------------------------------- open
def test_open_reports_what_the_device_says(fake: FakeAlpLibrary, dmd: AlpDmd) -> None:
    info = dmd.open()  # a second open returns the same info without new calls
    assert (info.width, info.height, info.serial_number) == (96, 64, "4711")
    assert info.max_pictures == 64
    assert info.min_picture_time_us == 50
    assert info.counts_progress is True
    assert fake.device_allocated()
    assert fake.sequence_count() == 0  # the probe sequence for the minimum picture time was freed
    assert fake.synch_polarity() == ALP.LEVEL_HIGH
    assert fake.projection_mode() == ALP.MASTER
    assert fake.call_count("AlpDevAlloc") == 1


def test_synch_polarity_low(fake: FakeAlpLibrary, fake_path: Path) -> None:
    with AlpDmd(fake_path, synch_active_high=False):
        assert fake.synch_polarity() == ALP.LEVEL_LOW


def test_no_device_is_device_not_found(fake: FakeAlpLibrary, fake_path: Path) -> None:
    fake.set_device_missing(True)
    with pytest.raises(DeviceNotFoundError, match="AlpDevAlloc.*ALP_NOT_ONLINE") as raised:
        AlpDmd(fake_path).open()
    assert raised.value.code == 1001
    with pytest.raises(DeviceNotFoundError):
        AlpDmd(fake_path, device_number=1).open()  # the fake has one device, number 0
    assert not fake.device_allocated()


def test_a_device_allocated_twice_is_busy(fake: FakeAlpLibrary, dmd: AlpDmd, fake_path: Path) -> None:
    with pytest.raises(DeviceNotFoundError, match="ALP_NOT_READY"):
        AlpDmd(fake_path).open()


def test_a_failed_open_releases_the_device(fake: FakeAlpLibrary, fake_path: Path) -> None:
    fake.fail_next("AlpSeqInquire", 1011)
    device = AlpDmd(fake_path)
    with pytest.raises(DeviceError, match="AlpSeqInquire.*ALP_ERROR_COMM"):
        device.open()
    assert not fake.device_allocated()
    device.close()  # nothing held: a no-op
    assert fake.call_count("AlpDevFree") == 1


def test_library_that_cannot_be_loaded(tmp_path: Path) -> None:
    missing = tmp_path / "alp4395.dll"
    with pytest.raises(LibraryLoadError, match="alp4395.dll.*install the ALP-4.x API"):
        AlpDmd(missing).open()


def test_library_without_the_alp_calls() -> None:
    name = ctypes.util.find_library("m") or ctypes.util.find_library("c")
    if name is None:
        pytest.fail("no C library found to stand for a library that is not an ALP")
    with pytest.raises(LibraryLoadError, match="does not export AlpDevAlloc"):
        AlpDmd(name).open()


# ---------------------------------------------------------------------------------------- load, play, wait
def test_load_play_wait_shows_every_picture_bit_exact(fake: FakeAlpLibrary, dmd: AlpDmd) -> None:
    raw = random_raw(np.random.default_rng(7), 7, 96, 64)
    shown = record_display(fake)
    dmd.load(dmd.prepare(raw), 7, 500)
    assert dmd.progress() == 0
    assert shown == []
    dmd.play()
    dmd.wait(1.0)
    assert dmd.progress() == 7
    assert [index for _, index, _ in shown] == list(range(7))
    assert [time_us for _, _, time_us in shown] == [500 * k for k in range(7)]
    for k, (picture, _, _) in enumerate(shown):
        np.testing.assert_array_equal(picture, raw[k])
    settings_ = fake.sequence_settings(fake.last_started_sequence())
    assert (settings_.bitplanes, settings_.picnum, settings_.data_format, settings_.bin_mode) == (
        1,
        7,
        ALP.DATA_BINARY_TOPDOWN,
        ALP.BIN_UNINTERRUPTED,
    )
    assert settings_.repeat == 1
    assert (settings_.picture_us, settings_.illuminate_us, settings_.synch_pulse_us) == (500, 500, 250)
    assert (settings_.synch_delay_us, settings_.trigger_delay_us) == (0, 0)


def test_a_second_play_shows_the_sequence_again(fake: FakeAlpLibrary, dmd: AlpDmd) -> None:
    raw = random_raw(np.random.default_rng(8), 3, 96, 64)
    shown = record_display(fake)
    dmd.load(dmd.prepare(raw), 3, 60)
    for _ in range(2):
        dmd.play()
        dmd.wait(1.0)
    assert [index for _, index, _ in shown] == [0, 1, 2, 0, 1, 2]
    assert fake.virtual_time_us() == 6 * 60


def test_synch_pulse_width_option(fake: FakeAlpLibrary, fake_path: Path) -> None:
    with AlpDmd(fake_path, synch_pulse_width_us=20) as device:
        device.load(device.prepare(random_raw(np.random.default_rng(2), 1, 96, 64)), 1, 100)
        device.play()
        assert fake.sequence_settings(fake.last_started_sequence()).synch_pulse_us == 20


@pytest.mark.parametrize(("edge", "code"), [("rising", ALP.EDGE_RISING), ("falling", ALP.EDGE_FALLING)])
def test_trigger_in_shows_one_picture_per_edge(fake: FakeAlpLibrary, fake_path: Path, edge: str, code: int) -> None:
    raw = random_raw(np.random.default_rng(5), 6, 96, 64)
    shown = record_display(fake)
    with AlpDmd(fake_path, trigger_in=edge, trigger_in_delay_us=7) as device:
        assert (fake.projection_mode(), fake.trigger_edge()) == (ALP.SLAVE, code)
        device.load(device.prepare(raw), 6, 100)
        device.play()
        assert shown == [] and device.progress() == 0  # nothing until an edge comes
        assert fake.trigger_in(4) == 4
        assert device.progress() == 4
        with pytest.raises(CommunicationTimeoutError, match="4 of 6 pictures"):
            device.wait(0.05)
        assert fake.trigger_in(5) == 2  # edges after the last picture show nothing
        device.wait(1.0)
        assert device.progress() == 6
        assert fake.sequence_settings(fake.last_started_sequence()).trigger_delay_us == 7
    assert [index for _, index, _ in shown] == list(range(6))
    for k, (picture, _, _) in enumerate(shown):
        np.testing.assert_array_equal(picture, raw[k])


def test_master_mode_ignores_trigger_in_edges(fake: FakeAlpLibrary, dmd: AlpDmd) -> None:
    assert fake.projection_mode() == ALP.MASTER
    dmd.load(dmd.prepare(random_raw(np.random.default_rng(6), 2, 96, 64)), 2, 100)
    assert fake.trigger_in(3) == 0  # nothing plays
    dmd.play()
    dmd.wait(1.0)
    assert dmd.progress() == 2 and fake.trigger_in(3) == 0


def test_prepare_copies_so_a_reused_buffer_cannot_change_the_load(fake: FakeAlpLibrary, dmd: AlpDmd) -> None:
    raw = random_raw(np.random.default_rng(10), 2, 96, 64)
    expected = raw.copy()
    prepared = dmd.prepare(raw)
    raw[:] = 0  # the caller reuses its buffer
    shown = record_display(fake)
    dmd.load(prepared, 2, 100)
    dmd.play()
    dmd.wait(1.0)
    np.testing.assert_array_equal(np.stack([picture for picture, _, _ in shown]), expected)


def test_load_replaces_the_previous_sequence(fake: FakeAlpLibrary, dmd: AlpDmd) -> None:
    rng = np.random.default_rng(3)
    dmd.load(dmd.prepare(random_raw(rng, 4, 96, 64)), 4, 100)
    second = random_raw(rng, 2, 96, 64)
    dmd.load(dmd.prepare(second), 2, 100)
    assert fake.sequence_count() == 1
    shown = record_display(fake)
    dmd.play()
    dmd.wait(1.0)
    assert len(shown) == 2
    np.testing.assert_array_equal(np.stack([picture for picture, _, _ in shown]), second)


@pytest.mark.parametrize(("width", "height"), [(96, 64), (100, 64), (13, 7), (1, 1), (8, 3), (1024, 768)])
def test_shapes_round_trip(fake: FakeAlpLibrary, fake_path: Path, width: int, height: int) -> None:
    # Widths that are not a multiple of 8 (no ALP DMD has one) are padded per row, which the fake unpads.
    fake.reset()
    fake.configure(width=width, height=height, serial=1, min_picture_time_us=10, memory_pictures=16)
    raw = random_raw(np.random.default_rng(width * 1000 + height), 3, width, height)
    shown = record_display(fake)
    with AlpDmd(fake_path) as device:
        device.load(device.prepare(raw), 3, 10)
        device.play()
        device.wait(1.0)
    np.testing.assert_array_equal(np.stack([picture for picture, _, _ in shown]), raw)


@settings(max_examples=40, deadline=None)
@given(
    width=st.integers(1, 40),
    height=st.integers(1, 12),
    n=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
)
def test_prepare_and_fake_display_round_trip(fake_path: Path, width: int, height: int, n: int, seed: int) -> None:
    library = FakeAlpLibrary(fake_path)
    library.reset()
    library.configure(width=width, height=height, serial=1, min_picture_time_us=10, memory_pictures=8)
    raw = random_raw(np.random.default_rng(seed), n, width, height)
    shown = record_display(library)
    try:
        with AlpDmd(fake_path) as device:
            device.load(device.prepare(raw), n, 10)
            device.play()
            device.wait(1.0)
            assert device.progress() == n
    finally:
        library.reset()
    np.testing.assert_array_equal(np.stack([picture for picture, _, _ in shown]), raw)


@settings(max_examples=60, deadline=None)
@given(width=st.integers(1, 40), height=st.integers(1, 12), seed=st.integers(0, 2**32 - 1))
def test_pack_topdown_puts_each_row_in_whole_bytes(width: int, height: int, seed: int) -> None:
    pictures = np.random.default_rng(seed).integers(0, 2, size=(2, height, width), dtype=np.uint8)
    device_format = pack_topdown(np.packbits(pictures.reshape(2, -1), axis=1), width, height)
    row_bytes = (width + 7) // 8
    assert device_format.shape == (2, height * row_bytes)
    rows = np.unpackbits(device_format.reshape(2, height, row_bytes), axis=2)
    np.testing.assert_array_equal(rows[:, :, :width], pictures)
    assert not rows[:, :, width:].any()  # the padding bits are zero


# ------------------------------------------------------------------------------ checks before any call
def test_bad_pictures_are_refused_before_any_call(fake: FakeAlpLibrary, dmd: AlpDmd) -> None:
    before = fake.call_counts()
    frame_bytes = 96 * 64 // 8
    with pytest.raises(InvalidInputError, match="shape"):
        dmd.prepare(np.zeros((2, frame_bytes + 1), np.uint8))
    with pytest.raises(InvalidInputError, match="uint8"):
        dmd.prepare(np.zeros((2, frame_bytes), np.int16))
    with pytest.raises(InvalidInputError, match="2-D"):
        dmd.prepare(np.zeros(frame_bytes, np.uint8))
    with pytest.raises(InvalidInputError, match="shape"):
        dmd.prepare(np.zeros((0, frame_bytes), np.uint8))
    prepared = dmd.prepare(np.zeros((2, frame_bytes), np.uint8))
    with pytest.raises(InvalidInputError, match="n_pictures"):
        dmd.load(prepared, 3, 100)
    with pytest.raises(InvalidInputError, match="prepare"):
        dmd.load(np.zeros((2, frame_bytes), np.uint8), 2, 100)
    with pytest.raises(InvalidInputError, match="C-contiguous"):
        dmd.load(AlpSequenceData(np.zeros((2, 2 * frame_bytes), np.uint8)[:, ::2], 96, 64), 2, 100)
    with pytest.raises(InvalidInputError, match="timeout_s"):
        dmd.wait(-1.0)
    with pytest.raises(InvalidInputError, match="timeout_s"):
        dmd.wait(float("nan"))
    assert fake.call_counts() == before


def test_picture_time_below_the_minimum_is_refused_before_any_call(fake: FakeAlpLibrary, dmd: AlpDmd) -> None:
    prepared = dmd.prepare(np.zeros((2, 96 * 64 // 8), np.uint8))
    before = fake.call_counts()
    with pytest.raises(DeviceRefusedError, match="minimum 50"):
        dmd.load(prepared, 2, 49)
    with pytest.raises(DeviceRefusedError, match="picture_time_us"):
        dmd.load(prepared, 2, 100.0)  # type: ignore[arg-type]
    assert fake.call_counts() == before


def test_too_many_pictures_are_refused_before_any_call(fake: FakeAlpLibrary, dmd: AlpDmd) -> None:
    prepared = dmd.prepare(np.zeros((65, 96 * 64 // 8), np.uint8))
    before = fake.call_counts()
    with pytest.raises(DeviceRefusedError, match="1 to 64"):
        dmd.load(prepared, 65, 100)
    assert fake.call_counts() == before


def test_a_synch_pulse_longer_than_the_picture_is_refused(fake: FakeAlpLibrary, fake_path: Path) -> None:
    with AlpDmd(fake_path, synch_pulse_width_us=200) as device:
        prepared = device.prepare(np.zeros((1, 96 * 64 // 8), np.uint8))
        before = fake.call_counts()
        with pytest.raises(DeviceRefusedError, match="synch pulse"):
            device.load(prepared, 1, 100)
        assert fake.call_counts() == before


def test_calls_before_open_or_load(fake: FakeAlpLibrary, fake_path: Path) -> None:
    device = AlpDmd(fake_path)
    with pytest.raises(DeviceError, match="not open"):
        device.prepare(np.zeros((1, 768), np.uint8))
    with pytest.raises(DeviceError, match="not open"):
        device.play()
    device.halt()  # safe in any state
    device.open()
    with pytest.raises(DeviceError, match="load"):
        device.play()
    assert fake.call_count("AlpProjStart") == 0
    device.close()


@pytest.mark.parametrize(
    "options",
    [
        {"device_number": -1},
        {"synch_pulse_width_us": 0},
        {"poll_interval_s": 0.0},
        {"poll_interval_s": float("inf")},
        {"trigger_in": "both"},
        {"trigger_in": True},
        {"trigger_in_delay_us": -1},
        {"trigger_in_delay_us": 1.5},
        {"synch_active_high": "yes"},
    ],
)
def test_bad_options(fake_path: Path, options: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError):
        AlpDmd(fake_path, **options)


# ------------------------------------------------------------------------------------------- error codes
EXPECTED_ERROR_CLASS = {
    1001: DeviceNotFoundError,
    1002: DeviceRefusedError,
    1003: DeviceRefusedError,
    1004: DeviceNotFoundError,
    1005: DeviceRefusedError,
    1006: DeviceRefusedError,
    1007: DeviceRefusedError,
    1008: DeviceRefusedError,
    1009: DeviceError,
    1010: DeviceError,
    1011: DeviceError,
    1012: DeviceNotFoundError,
    1013: DeviceError,
    1014: DeviceError,
    1018: DeviceError,
    1019: DeviceError,
    1020: DeviceError,
    1021: DeviceError,
    1999: DeviceError,
    4242: DeviceError,  # not a documented code
}


def test_the_error_table_covers_the_documented_codes() -> None:
    assert set(ALP_ERRORS) == set(EXPECTED_ERROR_CLASS) - {4242}


@pytest.mark.parametrize("code", sorted(EXPECTED_ERROR_CLASS))
@pytest.mark.parametrize("call", ["AlpSeqAlloc", "AlpSeqControl", "AlpSeqTiming", "AlpSeqPut"])
def test_a_failed_load_raises_the_typed_error_and_leaves_nothing_loaded(
    fake: FakeAlpLibrary, dmd: AlpDmd, call: str, code: int
) -> None:
    prepared = dmd.prepare(np.zeros((2, 96 * 64 // 8), np.uint8))
    fake.fail_next(call, code)
    with pytest.raises(DeviceError) as raised:
        dmd.load(prepared, 2, 100)
    assert type(raised.value) is EXPECTED_ERROR_CLASS[code]
    assert raised.value.code == code
    assert call in str(raised.value)
    assert (ALP_ERRORS[code][0] if code in ALP_ERRORS else "unknown ALP code") in str(raised.value)
    assert fake.sequence_count() == 0
    with pytest.raises(DeviceError, match="load"):
        dmd.play()


def test_play_and_progress_errors_are_typed(fake: FakeAlpLibrary, dmd: AlpDmd) -> None:
    dmd.load(dmd.prepare(np.zeros((2, 96 * 64 // 8), np.uint8)), 2, 100)
    fake.fail_next("AlpProjStart", 1002)
    with pytest.raises(DeviceRefusedError, match="AlpProjStart.*ALP_NOT_IDLE"):
        dmd.play()
    fake.stall_after(1)
    dmd.play()
    fake.fail_next("AlpProjInquireEx", 1012)
    with pytest.raises(DeviceNotFoundError, match="AlpProjInquireEx.*ALP_DEVICE_REMOVED"):
        dmd.progress()


# ------------------------------------------------------------------------------ the fake's own rules
def test_the_fake_enforces_the_call_order(raw_alp: Any, fake: FakeAlpLibrary) -> None:
    ffi, lib = raw_alp
    device, sequence = ffi.new("ALP_ID *"), ffi.new("ALP_ID *")
    frame = ffi.new("unsigned char[]", 96 * 64 // 8)
    assert lib.AlpSeqAlloc(1, 1, 1, sequence) == 1003  # no device yet
    assert lib.AlpDevAlloc(0, 0, device) == 0
    assert lib.AlpDevAlloc(0, 0, ffi.new("ALP_ID *")) == 1004  # already allocated
    dev = device[0]
    assert lib.AlpDevInquire(dev + 1, ALP.DEV_DISPLAY_WIDTH, ffi.new("long *")) == 1003  # an id never handed out
    assert lib.AlpSeqPut(dev, 999, 0, 1, frame) == 1005  # SeqPut before SeqAlloc
    assert lib.AlpProjStart(dev, 999) == 1005  # ProjStart without a sequence
    assert lib.AlpSeqAlloc(dev, 1, 65, sequence) == 1007  # more than the memory
    assert lib.AlpSeqAlloc(dev, 0, 1, sequence) == 1005
    assert lib.AlpSeqAlloc(dev, 1, 2, sequence) == 0
    seq = sequence[0]
    assert lib.AlpSeqControl(dev, seq, ALP.DATA_FORMAT, 4) == 1005  # no such data format
    assert lib.AlpSeqControl(dev, seq, ALP.DATA_FORMAT, ALP.DATA_BINARY_TOPDOWN) == 0
    assert lib.AlpSeqControl(dev, seq, ALP.BIN_MODE, 7) == 1005
    assert lib.AlpSeqTiming(dev, seq, 0, 49, 0, 0, 0) == 1005  # below the minimum picture time
    assert lib.AlpSeqTiming(dev, seq, 200, 100, 0, 0, 0) == 1005  # illuminate longer than the picture
    assert lib.AlpSeqTiming(dev, seq, 0, 100, 0, 50, 0) == 0
    assert lib.AlpSeqPut(dev, seq, 1, 2, frame) == 1005  # beyond the sequence
    assert lib.AlpSeqPut(dev, seq, 0, 1, ffi.NULL) == 1006
    assert lib.AlpSeqPut(dev, seq, 0, 1, frame) == 0
    assert lib.AlpProjStart(dev, seq) == 1005  # picture 1 never loaded (the fake's own rule)
    assert lib.AlpSeqPut(dev, seq, 1, 1, frame) == 0
    fake.stall_after(1)
    assert lib.AlpProjStart(dev, seq) == 0
    assert lib.AlpProjStart(dev, seq) == 1002  # already projecting
    assert lib.AlpSeqPut(dev, seq, 0, 1, frame) == 1008  # the sequence is in use
    assert lib.AlpSeqFree(dev, seq) == 1008
    assert lib.AlpProjWait(dev) == 1002  # the fake cannot block on a projection that never ends
    assert lib.AlpProjInquireEx(dev, 2317, ffi.new("tAlpProjProgress *")) == 1005
    assert lib.AlpProjHalt(dev) == 0
    assert lib.AlpProjWait(dev) == 0
    assert lib.AlpDevFree(dev) == 0  # frees everything it holds
    assert fake.sequence_count() == 0
    assert lib.AlpSeqFree(dev, seq) == 1003  # the device id is gone


def test_the_fake_refuses_unknown_functions_and_bad_configurations(fake: FakeAlpLibrary, dmd: AlpDmd) -> None:
    from firmware_sim.errors import SimConfigError

    with pytest.raises(SimConfigError, match="AlpFoo"):
        fake.fail_next("AlpFoo", 1005)
    with pytest.raises(SimConfigError):
        fake.configure(width=64, height=64)  # a device is allocated
    assert set(fake.call_counts()) == set(FAKE_FUNCTIONS)


# ---------------------------------------------------------------------------------------- halt and wait
def test_wait_times_out_and_halt_stops_the_play(fake: FakeAlpLibrary, dmd: AlpDmd) -> None:
    raw = random_raw(np.random.default_rng(9), 10, 96, 64)
    shown = record_display(fake)
    fake.stall_after(3)
    dmd.load(dmd.prepare(raw), 10, 100)
    dmd.play()
    assert dmd.progress() == 3
    with pytest.raises(CommunicationTimeoutError, match="3 of 10"):
        dmd.wait(0.02)
    with pytest.raises(DeviceError, match="still playing"):
        dmd.play()
    dmd.halt()
    assert dmd.progress() == 3
    dmd.halt()  # stopped: no error
    assert len(shown) == 3
    fake.stall_after(None)
    dmd.play()
    dmd.wait(1.0)
    assert dmd.progress() == 10
    assert len(shown) == 13


def test_load_while_playing_halts_first(fake: FakeAlpLibrary, dmd: AlpDmd) -> None:
    fake.stall_after(1)
    dmd.load(dmd.prepare(random_raw(np.random.default_rng(4), 4, 96, 64)), 4, 100)
    dmd.play()
    dmd.load(dmd.prepare(random_raw(np.random.default_rng(5), 2, 96, 64)), 2, 100)
    assert fake.sequence_count() == 1
    assert dmd.progress() == 0


def test_close_is_idempotent_and_releases_everything(fake: FakeAlpLibrary, fake_path: Path) -> None:
    device = AlpDmd(fake_path)
    device.close()  # never opened
    device.open()
    fake.stall_after(2)
    device.load(device.prepare(random_raw(np.random.default_rng(6), 4, 96, 64)), 4, 100)
    device.play()
    device.close()
    device.close()
    assert not fake.device_allocated()
    assert fake.sequence_count() == 0
    assert fake.call_count("AlpDevFree") == 1
    with pytest.raises(DeviceError, match="not open"):
        device.progress()
    device.open()  # it can be opened again
    device.close()


# -------------------------------------------------------------------------------------------------- build
def test_the_build_is_cached_by_source(tmp_path: Path) -> None:
    first = build_fake_alp(tmp_path)
    stamp = first.stat().st_mtime_ns
    assert build_fake_alp(tmp_path) == first
    assert first.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary files left


def test_the_build_without_gcc_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(SimBuildError, match="gcc was not found"):
        build_fake_alp(tmp_path / "cache")


def test_the_default_cache_follows_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from firmware_sim.lab.fake_alp import default_cache_dir

    monkeypatch.setenv("XDG_CACHE_HOME", os.fspath(tmp_path))
    assert default_cache_dir() == tmp_path / "opu-driver" / "fake-alp"
