"""Tests of opu_driver.transport: exact USB traffic through a fake pyusb backend, error mapping, and the
serial line through pyserial URLs (``loop://`` and a tiny scripted responder registered as ``opufake://``).

Timing assertions use deadlines of 0.05-0.2 s and only check "not before the deadline" and "well within a
generous margin after it" (0.5 s on a loaded 2-core machine), never exact durations.
"""

from __future__ import annotations

import errno
import pickle
import queue
import sys
import time
import types

import pytest
import serial
import serial.urlhandler.protocol_loop as protocol_loop
import usb.core

from opu_driver.errors import (
    CommunicationError,
    CommunicationTimeoutError,
    ConnectionLostError,
    DeviceNotFoundError,
    InvalidInputError,
    OpuError,
    ProtocolError,
    UnsupportedUrlError,
)
from opu_driver.protocol import EP_CAMERA_IN, EP_DMD_OUT, REQ_READ_REG, REQ_WRITE_REG, Register, format_command
from opu_driver.transport import (
    SerialTransport,
    StallError,
    UsbDeviceInfo,
    UsbTransport,
    find_usb_devices,
    list_serial_ports,
)
from tests.support.fake_usb import FakeUsbBackend, FakeUsbDevice

# ================================================================================================ USB


@pytest.fixture
def device() -> FakeUsbDevice:
    return FakeUsbDevice(
        serial="SIM-00000003",
        registers={int(Register.PROTOCOL_VERSION): 1, int(Register.EXPOSURE_US): 400},
        read_only={int(Register.PROTOCOL_VERSION)},
    )


@pytest.fixture
def backend(device) -> FakeUsbBackend:
    return FakeUsbBackend(device)


@pytest.fixture
def transport(backend):
    t = UsbTransport(backend=backend)
    t.open()
    backend.log.clear()
    yield t
    t.close()


def test_open_sets_configuration_claims_interface_and_reads_descriptors(backend, device):
    t = UsbTransport(backend=backend)
    assert not t.is_open
    t.open()
    assert t.is_open
    assert (t.manufacturer, t.product, t.serial_number, t.bcd_device) == (
        "OPU Open Stack",
        "OPU-1",
        "SIM-00000003",
        0x0100,
    )
    assert [(x.kind, x.value) for x in backend.log if x.kind in ("set_configuration", "claim_interface")] == [
        ("set_configuration", 1),
        ("claim_interface", 0),
    ]
    assert backend.vendor_requests() == []  # opening sends no register request
    t.close()
    assert [x.value for x in backend.of_kind("release_interface")] == [0]
    assert not t.is_open
    t.close()  # twice is fine
    assert len(backend.of_kind("release_interface")) == 1


def test_write_register_traffic_is_exact(transport, backend, device):
    transport.control_write(REQ_WRITE_REG, int(Register.EXPOSURE_US), 0, (1000).to_bytes(4, "little"), timeout_s=0.25)
    (req,) = backend.vendor_requests()
    assert (req.bmRequestType, req.bRequest, req.wValue, req.wIndex, req.data, req.timeout_ms) == (
        0x40,
        0x02,
        0x0028,
        0,
        b"\xe8\x03\x00\x00",
        250,
    )
    assert device.registers[int(Register.EXPOSURE_US)] == 1000


def test_read_register_traffic_is_exact(transport, backend):
    data = transport.control_read(REQ_READ_REG, int(Register.EXPOSURE_US), 0, 4, timeout_s=1.0)
    assert data == (400).to_bytes(4, "little") and isinstance(data, bytes)
    (req,) = backend.vendor_requests()
    assert (req.bmRequestType, req.bRequest, req.wValue, req.wIndex, req.length, req.timeout_ms) == (
        0xC0,
        0x01,
        0x0028,
        0,
        4,
        1000,
    )


def test_bulk_write_goes_to_dmd_out(transport, backend, device):
    payload = bytes(range(256)) * 3
    assert transport.bulk_write(payload, timeout_s=0.5) == len(payload)
    assert transport.bulk_write(memoryview(payload)[:10], timeout_s=0.5) == 10
    writes = backend.of_kind("bulk_write")
    assert [(w.endpoint, w.data, w.timeout_ms) for w in writes] == [
        (EP_DMD_OUT, payload, 500),
        (EP_DMD_OUT, payload[:10], 500),
    ]
    assert bytes(device.bulk_out) == payload + payload[:10]


def test_bulk_read_comes_from_camera_in_and_reuses_its_buffer(transport, backend, device):
    device.bulk_in += b"abcdefgh"
    assert transport.bulk_read(5, timeout_s=0.1) == b"abcde"
    assert transport.bulk_read(5, timeout_s=0.1) == b"fgh"
    reads = backend.of_kind("bulk_read")
    assert [(r.endpoint, r.length, r.timeout_ms) for r in reads] == [(EP_CAMERA_IN, 5, 100)] * 2
    assert reads[0].buffer_id == reads[1].buffer_id  # one preallocated buffer, not one per call


def test_timeouts_are_milliseconds_rounded_up_and_never_infinite(transport, backend):
    transport.control_read(REQ_READ_REG, 0, 0, 4, timeout_s=0.0001)
    transport.control_read(REQ_READ_REG, 0, 0, 4, timeout_s=0.0101)
    assert [r.timeout_ms for r in backend.vendor_requests()] == [1, 11]
    for bad in (0, -1, float("inf"), float("nan")):
        with pytest.raises(InvalidInputError):
            transport.control_read(REQ_READ_REG, 0, 0, 4, timeout_s=bad)
    assert len(backend.vendor_requests()) == 2  # nothing was sent for the refused calls


def _assert_chained(exc_info, cause_type=usb.core.USBError):
    assert isinstance(exc_info.value.__cause__, cause_type)


def test_stall_maps_to_stall_error(transport, device):
    with pytest.raises(StallError) as info:  # unknown address: the fake stalls like the device
        transport.control_read(REQ_READ_REG, 0x7777, 0, 4, timeout_s=0.1)
    _assert_chained(info)
    assert info.value.__cause__.errno == errno.EPIPE
    with pytest.raises(StallError):
        transport.control_write(REQ_WRITE_REG, int(Register.PROTOCOL_VERSION), 0, b"\x02\0\0\0", timeout_s=0.1)
    assert device.registers[int(Register.PROTOCOL_VERSION)] == 1
    assert issubclass(StallError, CommunicationError)
    device.fail_next("bulk_write", "stall")
    with pytest.raises(StallError):
        transport.bulk_write(b"x", timeout_s=0.1)


@pytest.mark.parametrize(
    "operation,call",
    [
        ("ctrl", lambda t: t.control_read(REQ_READ_REG, 0, 0, 4, timeout_s=0.1)),
        ("ctrl", lambda t: t.control_write(REQ_WRITE_REG, 0x28, 0, b"\0\0\0\0", timeout_s=0.1)),
        ("bulk_write", lambda t: t.bulk_write(b"abc", timeout_s=0.1)),
        ("bulk_read", lambda t: t.bulk_read(64, timeout_s=0.1)),
    ],
)
def test_error_mapping(transport, device, operation, call):
    device.fail_next(operation, "timeout")
    with pytest.raises(CommunicationTimeoutError) as info:
        call(transport)
    _assert_chained(info, usb.core.USBTimeoutError)
    assert isinstance(info.value, TimeoutError)

    device.fail_next(operation, "io")
    with pytest.raises(CommunicationError) as info:
        call(transport)
    assert type(info.value) is CommunicationError
    _assert_chained(info)

    device.fail_next(operation, "unplug")
    with pytest.raises(ConnectionLostError) as info:
        call(transport)
    _assert_chained(info)
    assert isinstance(info.value, ConnectionError)
    with pytest.raises(ConnectionLostError):  # still gone on the next call
        call(transport)


def test_empty_camera_fifo_is_a_timeout(transport):
    with pytest.raises(CommunicationTimeoutError):
        transport.bulk_read(16, timeout_s=0.05)


def test_mapped_errors_pickle_with_their_message(transport, device):
    device.fail_next("ctrl", "stall")
    with pytest.raises(StallError) as info:
        transport.control_read(REQ_READ_REG, 0, 0, 4, timeout_s=0.1)
    clone = pickle.loads(pickle.dumps(info.value))
    assert type(clone) is StallError and clone.message == info.value.message


def test_short_bulk_write_is_an_error(transport, device):
    device.max_bulk_write = 3
    with pytest.raises(CommunicationError, match="3 of 5"):
        transport.bulk_write(b"12345", timeout_s=0.1)


def test_closed_transport_refuses_transfers(backend):
    t = UsbTransport(backend=backend)
    with pytest.raises(ConnectionLostError):
        t.bulk_write(b"x", timeout_s=0.1)
    with t:
        assert t.is_open
    assert not t.is_open
    with pytest.raises(ConnectionLostError):
        t.control_read(REQ_READ_REG, 0, 0, 4, timeout_s=0.1)


def test_close_after_unplug_does_not_raise(transport, device):
    device.plugged = False
    transport.close()
    assert not transport.is_open


def test_no_device_found():
    with pytest.raises(DeviceNotFoundError, match="no OPU found"):
        UsbTransport(backend=FakeUsbBackend()).open()
    other = FakeUsbDevice(vendor_id=0x1234)
    with pytest.raises(DeviceNotFoundError):
        UsbTransport(backend=FakeUsbBackend(other)).open()


def test_several_devices_need_a_serial_number():
    a = FakeUsbDevice(serial="SIM-A", address=1)
    b = FakeUsbDevice(serial="SIM-B", address=2)
    backend = FakeUsbBackend(a, b)
    with pytest.raises(DeviceNotFoundError) as info:
        UsbTransport(backend=backend).open()
    assert "SIM-A" in str(info.value) and "SIM-B" in str(info.value)
    with UsbTransport(serial_number="SIM-B", backend=backend) as t:
        assert t.serial_number == "SIM-B"
        t.bulk_write(b"hi", timeout_s=0.1)
    assert bytes(b.bulk_out) == b"hi" and bytes(a.bulk_out) == b""
    with pytest.raises(DeviceNotFoundError, match="SIM-C"):
        UsbTransport(serial_number="SIM-C", backend=backend).open()


def test_access_denied_explains_the_udev_rule():
    denied = FakeUsbDevice(access_denied=True)
    with pytest.raises(DeviceNotFoundError) as info:
        UsbTransport(backend=FakeUsbBackend(denied)).open()
    assert "99-opu.rules" in str(info.value) and "access denied" in str(info.value)


def test_busy_interface_is_reported(device, backend):
    device.fail_next("claim_interface", "busy")
    with pytest.raises(DeviceNotFoundError, match="busy") as info:
        UsbTransport(backend=backend).open()
    _assert_chained(info)


def test_find_usb_devices_lists_accessible_and_denied():
    ok = FakeUsbDevice(serial="SIM-1", bus=3, address=7)
    denied = FakeUsbDevice(serial="SIM-2", bus=3, address=8, access_denied=True)
    stranger = FakeUsbDevice(serial="X", product_id=0x0001)
    infos = find_usb_devices(backend=FakeUsbBackend(ok, denied, stranger))
    assert infos[0] == UsbDeviceInfo(3, 7, "SIM-1", "OPU-1", "OPU Open Stack", True, "")
    assert (infos[1].bus, infos[1].address, infos[1].serial_number, infos[1].accessible) == (3, 8, None, False)
    assert "99-opu.rules" in infos[1].error
    assert len(infos) == 2


# ================================================================================================ serial


class _Responder(protocol_loop.Serial):
    """loop:// whose writes go to a script instead of coming back: each complete line written is answered
    with ``REPLIES[line]`` (bytes), or nothing when the script says None."""

    replies: dict = {}

    def from_url(self, url):
        return None  # any opufake:// URL; there are no options

    def open(self):
        super().open()
        self.queue = queue.Queue()  # unbounded, so a long scripted reply cannot block the writer

    def write(self, data):
        if not self.is_open:
            raise serial.PortNotOpenError()
        self._line = getattr(self, "_line", b"") + bytes(data)
        while b"\n" in self._line:
            line, self._line = self._line.split(b"\n", 1)
            reply = self.replies.get(line.decode("ascii"), b'ERR -113,"Undefined header"\n')
            if isinstance(reply, Exception):
                raise reply
            for byte in reply or b"":
                self.queue.put(bytes([byte]))
        return len(data)


@pytest.fixture
def responder():
    """Register the scripted responder as the ``opufake://`` URL scheme of pyserial for one test."""
    package = types.ModuleType("opu_test_serial")
    package.__path__ = []
    handler = types.ModuleType("opu_test_serial.protocol_opufake")
    handler.Serial = type("Serial", (_Responder,), {"replies": {}})
    sys.modules["opu_test_serial"] = package
    sys.modules["opu_test_serial.protocol_opufake"] = handler
    serial.protocol_handler_packages.append("opu_test_serial")
    try:
        yield handler.Serial.replies
    finally:
        serial.protocol_handler_packages.remove("opu_test_serial")
        del sys.modules["opu_test_serial.protocol_opufake"], sys.modules["opu_test_serial"]


def test_loop_url_echo_is_one_line():
    with SerialTransport("loop://", timeout_s=0.2) as line:
        assert line.query("*IDN?") == "*IDN?"
        assert line.query(format_command("LASER:POWER", 12.5)) == "LASER:POWER 12.5"


def test_query_returns_the_reply_line(responder):
    responder["*IDN?"] = b"OPU Open Stack,OPU-1,SIM-00000003,1.0.0\r\n"
    responder["LASER:POWER?"] = b"50.000\n"
    with SerialTransport("opufake://dev", timeout_s=0.2) as line:
        assert line.query("*IDN?") == "OPU Open Stack,OPU-1,SIM-00000003,1.0.0"
        assert line.query(b"LASER:POWER?\n") == "50.000"
        assert line.query("NOPE") == 'ERR -113,"Undefined header"'  # the transport returns error lines raw


def test_stale_input_is_discarded_before_sending(responder):
    responder["A?"] = b"1\n"
    with SerialTransport("opufake://dev", timeout_s=0.2) as line:
        for byte in b"late reply\ngarbage":
            line._port.queue.put(bytes([byte]))
        assert line.query("A?") == "1"


def test_no_reply_times_out_at_the_deadline(responder):
    responder["SILENT?"] = None
    with SerialTransport("opufake://dev", timeout_s=1.0) as line:
        start = time.monotonic()
        with pytest.raises(CommunicationTimeoutError, match="SILENT"):
            line.query("SILENT?", timeout_s=0.1)
        elapsed = time.monotonic() - start
    assert 0.1 <= elapsed < 0.6


def test_partial_reply_times_out_and_shows_the_part(responder):
    responder["HALF?"] = b"12.3"
    responder["WHOLE?"] = b"4\n"
    with SerialTransport("opufake://dev", timeout_s=0.05) as line:
        with pytest.raises(CommunicationTimeoutError, match="12.3"):
            line.query("HALF?")
        assert line.query("WHOLE?") == "4"  # the half line does not leak into the next reply


def test_overlong_reply_is_a_protocol_error(responder):
    responder["LONG?"] = b"x" * 5000 + b"\n"
    responder["OK?"] = b"OK\n"
    with SerialTransport("opufake://dev", timeout_s=0.5) as line:
        with pytest.raises(ProtocolError):
            line.query("LONG?")
        assert line.query("OK?") == "OK"


def test_port_failure_is_connection_lost(responder):
    responder["BOOM"] = serial.SerialException("device disconnected")
    with SerialTransport("opufake://dev", timeout_s=0.1) as line:
        with pytest.raises(ConnectionLostError) as info:
            line.query("BOOM")
        assert isinstance(info.value.__cause__, serial.SerialException)
    with pytest.raises(ConnectionLostError):
        line.query("A?")  # closed


def test_bad_commands_are_refused_before_sending():
    with SerialTransport("loop://", timeout_s=0.1) as line:
        for bad in ("A\nB?", "caf\u00e9?", "TAB\t?"):
            with pytest.raises(InvalidInputError):
                line.query(bad)
        with pytest.raises(InvalidInputError):
            line.query("A?", timeout_s=0)


def test_open_errors():
    with pytest.raises(UnsupportedUrlError):
        SerialTransport("nosuchscheme://x").open()
    with pytest.raises(DeviceNotFoundError):
        SerialTransport("/dev/does-not-exist-opu").open()
    assert issubclass(UnsupportedUrlError, OpuError)


def test_list_serial_ports_returns_port_infos():
    ports = list_serial_ports()
    assert isinstance(ports, list)
    for port in ports:
        assert isinstance(port.device, str)
    assert list_serial_ports(vendor_id=0x1209, product_id=0x4F50) == [
        p for p in ports if (p.vid, p.pid) == (0x1209, 0x4F50)
    ]
