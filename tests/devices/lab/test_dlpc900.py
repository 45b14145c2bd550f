"""The DLPC900 backend against the byte-level emulator (a pyusb backend), and TI's documented byte examples."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import numpy as np
import pytest

from firmware_sim.lab.dlpc900 import Dlpc900Backend, Dlpc900Emulator
from opu_driver.devices.lab import dlpc900_wire as wire
from opu_driver.devices.lab.dlpc900 import Dlpc900Dmd, Dlpc900Prepared, upload_wire_bytes
from opu_driver.errors import (
    CommunicationError,
    CommunicationTimeoutError,
    ConfigurationError,
    DeviceError,
    DeviceNotFoundError,
    DeviceRefusedError,
    InvalidInputError,
)

WIDTH, HEIGHT = 96, 64


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def emulator() -> Dlpc900Emulator:
    return Dlpc900Emulator(WIDTH, HEIGHT)


@pytest.fixture
def dmd(emulator: Dlpc900Emulator) -> Iterator[Dlpc900Dmd]:
    device = Dlpc900Dmd(backend=Dlpc900Backend([emulator]), geometry=(WIDTH, HEIGHT))
    device.open()
    yield device
    device.close()


def _packed(pictures: np.ndarray) -> np.ndarray:
    return np.packbits(pictures.reshape(pictures.shape[0], -1), axis=1)


def _random_pictures(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, HEIGHT, WIDTH)) < 0.5


def _send(emulator: Dlpc900Emulator, flags: int, sequence: int, command: int, data: bytes) -> bytes:
    """Send one message as raw reports and return the reply's first report."""
    for report in wire.build_reports(flags | wire.FLAG_REPLY, sequence, command, data):
        emulator.usb_write(report)
    reply = emulator.usb_read()
    assert reply is not None
    return reply


# ---------------------------------------------------------------------------------------- golden bytes
def test_guide_on_the_fly_example_bytes() -> None:
    """DLPU018, 'Image On-The-Fly Pattern Mode example' steps 2..5."""
    assert wire.lut_entry(0, 200, 0, 0, 0, led_mask=0b001) == bytes.fromhex("0000C8000011000000000000")
    assert wire.lut_entry(1, 400, 0, 0, 1, bit_depth=2, led_mask=0b010) == bytes.fromhex("010090010023000000000008")
    assert wire.lut_configuration(2, 0) == bytes.fromhex("020000000000")
    assert wire.bmp_load_init(0, 6009 + 48) == bytes.fromhex("0000A9170000")


def test_guide_usb_transaction_examples() -> None:
    """DLPU018 section 1.2.2/1.2.3 (report id left out: it is not on the bus): read and write of 0x1100."""
    read = wire.build_reports(0xC0, 0x11, 0x1100)
    assert read[0][:6] == bytes.fromhex("C01102000011")
    write = wire.build_reports(0x00, 0x12, 0x1100, bytes.fromhex("FF01FF01FF01"))
    assert write[0][:12] == bytes.fromhex("001208000011FF01FF01FF01")
    assert all(len(r) == 64 for r in read + write)


def test_lut_entry_fields_for_high_planes_and_images() -> None:
    entry = wire.lut_entry(399, 105, 7, 16, 23, wait_for_trigger_in=True, disable_trigger_out_2=True)
    assert struct.unpack_from("<H", entry, 0)[0] == 399
    assert entry[5] & 0x80 and entry[9] == 1
    assert int.from_bytes(entry[6:9], "little") == 7
    assert struct.unpack_from("<H", entry, 10)[0] == 16 | 23 << 11


def test_trigger_out_bytes() -> None:
    assert wire.trigger_out(True, -20, 20000) == bytes((1,)) + struct.pack("<hh", -20, 20000)
    with pytest.raises(ValueError):
        wire.trigger_out(False, 0, 20001)


def test_multi_report_message_has_header_only_in_first_report() -> None:
    data = bytes(range(100))
    reports = wire.build_reports(0, 5, 0x1A2B, data)
    assert len(reports) == 2
    assert reports[0][2:4] == struct.pack("<H", 102)
    assert reports[0][6:] == data[:58] and reports[1][: 100 - 58] == data[58:]


# ---------------------------------------------------------------------------------------- open / close
def test_open_detaches_usbhid_and_close_gives_it_back(emulator: Dlpc900Emulator) -> None:
    device = Dlpc900Dmd(backend=Dlpc900Backend([emulator]), geometry=(WIDTH, HEIGHT))
    assert emulator.kernel_driver_attached
    info = device.open()
    assert not emulator.kernel_driver_attached and emulator.claimed
    assert emulator.mode == wire.DisplayMode.ON_THE_FLY
    assert (info.max_pictures, info.min_picture_time_us, info.counts_progress) == (400, 105, False)
    device.close()
    assert emulator.kernel_driver_attached and not emulator.claimed
    device.close()  # idempotent


def test_geometry_from_firmware_type() -> None:
    with Dlpc900Dmd(backend=Dlpc900Backend([Dlpc900Emulator()])) as device:
        info = device.open()
    assert (info.model, info.width, info.height) == ("DLP6500", 1920, 1080)


def test_dual_controller_dmd_is_refused_clearly() -> None:
    device = Dlpc900Dmd(backend=Dlpc900Backend([Dlpc900Emulator(dmd_type=2)]))
    with pytest.raises(ConfigurationError, match="two controllers"):
        device.open()


def test_serial_number_picks_the_board() -> None:
    boards = [Dlpc900Emulator(WIDTH, HEIGHT, serial_number=s) for s in ("A1", "B2")]
    with pytest.raises(DeviceNotFoundError, match="2 DLPC900"):
        Dlpc900Dmd(backend=Dlpc900Backend(boards), geometry=(WIDTH, HEIGHT)).open()
    with Dlpc900Dmd("B2", backend=Dlpc900Backend(boards), geometry=(WIDTH, HEIGHT)) as device:
        assert device.open().serial_number == "B2"
        assert boards[1].claimed and not boards[0].claimed
    with pytest.raises(DeviceNotFoundError, match="C3"):
        Dlpc900Dmd("C3", backend=Dlpc900Backend(boards)).open()


# ---------------------------------------------------------------------------------------- load and play
def test_400_pictures_play_once_bit_exact_with_one_trigger_each(emulator: Dlpc900Emulator, dmd: Dlpc900Dmd) -> None:
    pictures = _random_pictures(400)
    packed = _packed(pictures)
    shown: list[tuple[np.ndarray, int, int]] = []
    emulator.on_display(lambda p, i, t: shown.append((p.copy(), i, t)))
    prepared = dmd.prepare(packed)
    assert len(prepared.images) == 17  # ceil(400 / 24)
    emulator.reset_counters()
    dmd.load(prepared, 400, 250)
    assert emulator.bytes_out == prepared.wire_bytes + 64 * (1 + 400 + 1)  # stop, 400 LUT entries, LUT config
    dmd.play()
    dmd.wait(timeout_s=5.0)
    assert [i for _, i, _ in shown] == list(range(400))
    for k, (frame, _, _) in enumerate(shown):
        np.testing.assert_array_equal(frame, packed[k], err_msg=f"picture {k} (plane {k % 24})")
    events = list(emulator.events)
    assert len(events) == 400
    assert [e.rise_us for e in events] == [250 * k for k in range(400)]
    assert [e.trigger_out_2 for e in events] == [True] + [False] * 399
    assert not emulator.running


def test_planes_16_to_23_survive_the_trip(emulator: Dlpc900Emulator, dmd: Dlpc900Dmd) -> None:
    """One lit mirror per picture at a distinct place: a plane shift (16..23 moved to 24..31) shows dark pictures."""
    pictures = np.zeros((24, HEIGHT, WIDTH), dtype=bool)
    for k in range(24):
        pictures[k, k, 2 * k] = True
    dmd.load(dmd.prepare(_packed(pictures)), 24, 105)
    for k in range(24):
        np.testing.assert_array_equal(emulator.shown_pictures(k), pictures[k])


def test_images_are_uploaded_in_reverse_order(emulator: Dlpc900Emulator, dmd: Dlpc900Dmd) -> None:
    uploads: list[int] = []
    original = emulator._WRITES[0x1A2A]

    def spy(self: Dlpc900Emulator, data: bytes) -> bytes:
        uploads.append(struct.unpack_from("<H", data)[0])
        return original(self, data)

    emulator._WRITES = {**emulator._WRITES, 0x1A2A: spy}
    dmd.load(dmd.prepare(_packed(_random_pictures(50))), 50, 105)
    assert uploads == [2, 1, 0]


def test_401_pictures_refused_before_anything_is_sent(emulator: Dlpc900Emulator, dmd: Dlpc900Dmd) -> None:
    emulator.reset_counters()
    with pytest.raises(DeviceRefusedError, match="400"):
        dmd.prepare(_packed(_random_pictures(401)))
    fake = Dlpc900Prepared((b"",) * 17, 401, WIDTH, HEIGHT, 0, 0.0)
    with pytest.raises(DeviceRefusedError, match="400"):
        dmd.load(fake, 401, 105)
    assert emulator.reports_out == 0


def test_picture_time_below_minimum_refused_before_sending(emulator: Dlpc900Emulator, dmd: Dlpc900Dmd) -> None:
    prepared = dmd.prepare(_packed(_random_pictures(3)))
    emulator.reset_counters()
    with pytest.raises(DeviceRefusedError, match="105"):
        dmd.load(prepared, 3, 104)
    assert emulator.reports_out == 0


def test_bad_input_is_typed(dmd: Dlpc900Dmd) -> None:
    with pytest.raises(InvalidInputError):
        dmd.prepare(np.zeros((2, 10), dtype=np.uint8))
    with pytest.raises(InvalidInputError):
        dmd.prepare(np.zeros((2, WIDTH * HEIGHT // 8), dtype=np.int16))
    with pytest.raises(InvalidInputError):
        dmd.load(object(), 1, 200)
    with pytest.raises(DeviceError, match="nothing loaded"):
        dmd.play()


def test_slow_upload_is_refused_with_the_numbers(emulator: Dlpc900Emulator) -> None:
    device = Dlpc900Dmd(backend=Dlpc900Backend([emulator]), geometry=(WIDTH, HEIGHT), max_upload_s=0.5)
    with device:
        prepared = device.prepare(_packed(_random_pictures(48)))
        emulator.reset_counters()
        with pytest.raises(ConfigurationError, match=rf"{prepared.wire_bytes} bytes.*64 kB/s"):
            device.load(prepared, 48, 105)
        assert emulator.reports_out == 0
        device.max_upload_s = None
        device.load(prepared, 48, 105)


def test_upload_estimate_counts_the_bus_bytes(emulator: Dlpc900Emulator, dmd: Dlpc900Dmd) -> None:
    prepared = dmd.prepare(_packed(_random_pictures(24)))
    assert prepared.wire_bytes == upload_wire_bytes([len(prepared.images[0])])
    emulator.reset_counters()
    dmd.load(prepared, 24, 105)
    lut_bytes = 64 * (1 + 24 + 1)
    assert emulator.bytes_out - lut_bytes == prepared.wire_bytes


# ---------------------------------------------------------------------------------------- the board's checks
def _configured(emulator: Dlpc900Emulator) -> None:
    emulator.kernel_driver_attached = False
    emulator.claimed = True
    assert _send(emulator, 0, 1, 0x1A1B, b"\x03")[0] & wire.FLAG_ERROR == 0
    for i in range(48):
        entry = wire.lut_entry(i, 105, 0, i // 24, i % 24)
        assert _send(emulator, 0, 2, 0x1A34, entry)[0] & wire.FLAG_ERROR == 0
    assert _send(emulator, 0, 3, 0x1A31, wire.lut_configuration(48, 48))[0] & wire.FLAG_ERROR == 0


def test_emulator_refuses_upload_out_of_reverse_order() -> None:
    emulator = Dlpc900Emulator(WIDTH, HEIGHT)
    _configured(emulator)
    reply = _send(emulator, 0, 9, 0x1A2A, wire.bmp_load_init(0, 100))
    assert reply[0] & wire.FLAG_ERROR and reply[1] == 9
    code = _send(emulator, wire.FLAG_READ, 10, 0x0100, b"")
    assert code[1] == 10 and code[4] == 6
    assert _send(emulator, 0, 11, 0x1A2A, wire.bmp_load_init(1, 100))[0] & wire.FLAG_ERROR == 0


def test_emulator_refuses_chunks_over_504_bytes() -> None:
    emulator = Dlpc900Emulator(WIDTH, HEIGHT)
    _configured(emulator)
    assert _send(emulator, 0, 4, 0x1A2A, wire.bmp_load_init(1, 2000))[0] & wire.FLAG_ERROR == 0
    chunk = bytes(505)
    message = bytes((wire.FLAG_REPLY, 5)) + struct.pack("<HHH", 2 + 2 + len(chunk), 0x1A2B, len(chunk)) + chunk
    message += bytes(-len(message) % 64)
    for i in range(0, len(message), 64):
        emulator.usb_write(message[i : i + 64])
    reply = emulator.usb_read()
    assert reply is not None and reply[0] & wire.FLAG_ERROR and reply[1] == 5
    assert emulator.error_code == 6


def test_emulator_refuses_start_without_images_and_lut_after_definitions() -> None:
    emulator = Dlpc900Emulator(WIDTH, HEIGHT)
    _configured(emulator)
    assert _send(emulator, 0, 6, 0x1A24, b"\x02")[0] & wire.FLAG_ERROR
    assert emulator.error_code == 7
    _send(emulator, 0, 7, 0x1A34, wire.lut_entry(0, 105, 0, 0, 0))  # a definition after the configuration
    assert _send(emulator, 0, 8, 0x1A2A, wire.bmp_load_init(1, 100))[0] & wire.FLAG_ERROR
    assert emulator.error_code == 5


def test_refusal_becomes_typed_error_with_code_and_nothing_to_play(emulator: Dlpc900Emulator, dmd: Dlpc900Dmd) -> None:
    prepared = dmd.prepare(_packed(_random_pictures(30)))
    emulator.inject("refuse", code=14)
    with pytest.raises(DeviceRefusedError) as info:
        dmd.load(prepared, 30, 200)
    assert info.value.code == 14 and "exposure" in str(info.value)
    with pytest.raises(DeviceError, match="nothing loaded"):
        dmd.play()
    dmd.load(prepared, 30, 200)  # the next load works
    dmd.play()
    dmd.wait(2.0)


def test_no_reply_times_out_and_stall_is_a_communication_error(emulator: Dlpc900Emulator, dmd: Dlpc900Dmd) -> None:
    emulator.inject("no_reply")
    with pytest.raises(CommunicationTimeoutError):
        dmd.halt()
    emulator.inject("stall")
    with pytest.raises(CommunicationError):
        dmd.halt()
    dmd.halt()


def test_wait_times_out_when_the_sequence_does_not_end() -> None:
    clock = FakeClock()
    emulator = Dlpc900Emulator(WIDTH, HEIGHT, clock=clock)
    with Dlpc900Dmd(backend=Dlpc900Backend([emulator]), geometry=(WIDTH, HEIGHT)) as device:
        device.load(device.prepare(_packed(_random_pictures(10))), 10, 1000)
        device.play()
        with pytest.raises(CommunicationTimeoutError):
            device.wait(0.05)
        clock.now += 0.0045  # 4.5 pictures of 1 ms
        emulator.advance()
        assert len(emulator.events) == 5
        device.halt()
        clock.now += 1.0
        emulator.advance()
        assert len(emulator.events) == 5 and not emulator.running


@pytest.mark.slow
def test_full_size_upload_bytes_random_and_macropixel() -> None:
    """A full 1920x1080 set of 24 pictures through the emulator: the bytes on the bus match the estimate."""
    emulator = Dlpc900Emulator()
    rng = np.random.default_rng(5)
    random = rng.random((24, 1080, 1920)) < 0.5
    macro = np.kron(rng.random((24, 135, 240)) < 0.5, np.ones((8, 8), dtype=bool))
    with Dlpc900Dmd(backend=Dlpc900Backend([emulator]), max_upload_s=None) as device:
        for pictures, low, high in ((random, 6_000_000, 6_700_000), (macro, 100_000, 200_000)):
            prepared = device.prepare(np.packbits(pictures.reshape(24, -1), axis=1))
            assert low < prepared.wire_bytes < high
            emulator.reset_counters()
            device.load(prepared, 24, 105)
            assert emulator.bytes_out - 64 * 26 == prepared.wire_bytes
            for k in (0, 15, 16, 23):
                np.testing.assert_array_equal(emulator.shown_pictures(k), pictures[k])
