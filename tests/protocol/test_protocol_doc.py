"""docs/protocol.md agrees with both implementations of the protocol, table by table.

The register map (1.2), the device error codes (1.7), the pixel formats (1.5) and the serial error codes (2)
are parsed out of the document's markdown tables and compared, name by name and number by number, with the
driver's enums (``opu_driver.protocol``) and with the emulator's (``firmware_sim``), which are written
independently. The register access column is checked against the driver's REGISTER_ACCESS and against what
the emulated firmware actually does with reads and writes.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from firmware_sim import controller as fw_controller
from firmware_sim import device as fw_device
from firmware_sim import wire as fw_wire
from firmware_sim.config import SimConfig
from opu_driver import protocol
from tests.support import DOCS_DIR

DOC = DOCS_DIR / "protocol.md"

_HEADING = re.compile(r"^#{2,3} +(\S+)")


def _cells(row: str) -> list[str]:
    """The cells of one markdown table row; ``\\|`` inside a cell is a literal bar, not a separator."""
    body = row.strip()
    assert body.startswith("|") and body.endswith("|"), row
    cells = re.split(r"(?<!\\)\|", body[1:-1])
    return [c.strip().replace("\\|", "|") for c in cells]


def _tables(text: str) -> list[tuple[str, list[str], list[list[str]]]]:
    """Every table of the document: (number of the section it is in, header cells, body rows)."""
    tables = []
    section = ""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        heading = _HEADING.match(lines[i])
        if heading:
            section = heading.group(1).rstrip(".")
        if lines[i].startswith("|") and i + 1 < len(lines) and re.fullmatch(r"\|( *-+ *\|)+", lines[i + 1].strip()):
            header = _cells(lines[i])
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                row = _cells(lines[i])
                assert len(row) == len(header), f"row {lines[i]!r} has {len(row)} cells, header {len(header)}"
                rows.append(row)
                i += 1
            tables.append((section, header, rows))
            continue
        i += 1
    return tables


def _table(section: str, header: list[str]) -> list[list[str]]:
    found = [rows for sec, head, rows in _tables(DOC.read_text(encoding="utf-8")) if sec == section and head == header]
    assert len(found) == 1, f"expected one table {header} in section {section}, found {len(found)}"
    return found[0]


def _number(cell: str) -> int:
    return int(cell.strip("`"), 0)


def _unique(pairs: list[tuple[str, object]]) -> dict[str, object]:
    names = [name for name, _ in pairs]
    assert len(set(names)) == len(names), f"duplicate names in a table: {names}"
    return dict(pairs)


# -- the document's tables ------------------------------------------------------------------------------------


def doc_registers() -> dict[str, tuple[int, str]]:
    rows = _table("1.2", ["address", "name", "access", "meaning and range"])
    return _unique([(name, (_number(address), access)) for address, name, access, _ in rows])


def doc_device_errors() -> dict[str, tuple[int, str]]:
    rows = _table("1.7", ["code", "name", "meaning"])
    return _unique([(name, (int(code), meaning)) for code, name, meaning in rows])


def doc_pixel_formats() -> dict[str, int]:
    rows = _table("1.5", ["code", "name", "bytes for n pixels", "encoding"])
    return _unique([(name, int(code)) for code, name, _, _ in rows])


def doc_serial_errors() -> dict[int, str]:
    rows = _table("2", ["code", "message", "when"])
    codes = [int(code) for code, _, _ in rows]
    assert len(set(codes)) == len(codes), codes
    return {int(code): message for code, message, _ in rows}


def test_the_tables_are_found_and_not_empty():
    # A parser that silently finds nothing would make every comparison below vacuous.
    assert len(doc_registers()) >= 29
    assert len(doc_device_errors()) >= 14
    assert len(doc_pixel_formats()) >= 5
    assert len(doc_serial_errors()) >= 11


def test_cells_split_on_bars_but_not_on_escaped_bars():
    assert _cells(r"| `LASER:STATE ON\|OFF` | `OK` | x |") == ["`LASER:STATE ON|OFF`", "`OK`", "x"]


# -- registers ------------------------------------------------------------------------------------------------


def test_register_table_matches_the_driver():
    expected = {reg.name: (int(reg), protocol.REGISTER_ACCESS[reg]) for reg in protocol.Register}
    assert doc_registers() == expected


def test_register_table_matches_the_firmware_addresses():
    assert {name: address for name, (address, _) in doc_registers().items()} == {
        reg.name: int(reg) for reg in fw_device.Register
    }


@pytest.fixture
def device() -> fw_device.EmulatedDevice:
    # Small geometry: the access checks need registers, not optics.
    return fw_device.EmulatedDevice(SimConfig.from_query("dmd=32x16&camera=16x12&cell=4"))


def _firmware_access(device: fw_device.EmulatedDevice, address: int) -> str:
    """R, W or RW as the firmware behaves: a write to R stalls with E_READ_ONLY, W reads 0, RW reads back.

    The caller puts the device in a state where every RW register holds a non-zero value, so that writing
    that value back is valid, and a register that reads 0 is either read-only or a write-only strobe.
    """
    before = device.usb_ctrl_read_register(address)
    assert before is not None, f"register 0x{address:04X} does not answer reads"
    # A non-zero probe for registers that read 0: ABORT for SEQ_CONTROL (always accepted), 1 otherwise
    # (SOFT_TRIGGER outside trigger mode SOFT is refused with E_TRIGGER, which still shows it is writable).
    value = before or (fw_device.Register.SEQ_CONTROL == address and 2 or 1)
    accepted = device.usb_ctrl_write_register(address, value)
    if not accepted:
        code = device.usb_ctrl_read_register(fw_device.Register.LAST_ERROR)
        if code == fw_wire.ErrorCode.E_READ_ONLY:
            return "R"
        assert before == 0, f"0x{address:04X}: writing back {before} stalled with {code}"
    after = device.usb_ctrl_read_register(address)
    if before == 0 and after == 0:
        return "W"
    assert accepted and after == value, f"0x{address:04X}: wrote {value}, read back {after}"
    return "RW"


def test_register_access_matches_the_firmware(device: fw_device.EmulatedDevice):
    reg = fw_device.Register
    # Move the ROI off (0, 0) so that no RW register reads 0 (shrink first, as section 1.2 says).
    for address, value in ((reg.ROI_W, 15), (reg.ROI_H, 11), (reg.ROI_X, 1), (reg.ROI_Y, 1)):
        assert device.usb_ctrl_write_register(address, value)
    firmware = {r.name: _firmware_access(device, int(r)) for r in reg}
    assert {name: access for name, (_, access) in doc_registers().items()} == firmware


def test_unknown_register_is_not_in_the_table(device: fw_device.EmulatedDevice):
    # Every address of the firmware that answers is in the table, and a gap address stalls.
    documented = {address for address, _ in doc_registers().values()}
    for address in range(0x0040):
        answers = device.usb_ctrl_read_register(address) is not None
        if address == fw_device.Register.LAST_ERROR:
            continue
        assert answers == (address in documented), f"0x{address:04X}"


# -- device error codes ----------------------------------------------------------------------------------------


def test_device_error_table_matches_the_driver():
    expected = {code.name: (int(code), code.meaning) for code in protocol.DeviceErrorCode}
    assert doc_device_errors() == expected


def test_device_error_table_matches_the_firmware():
    assert {name: code for name, (code, _) in doc_device_errors().items()} == {
        code.name: int(code) for code in fw_wire.ErrorCode
    }


# -- pixel formats ---------------------------------------------------------------------------------------------


def test_pixel_format_table_matches_the_driver():
    assert doc_pixel_formats() == {fmt.name: int(fmt) for fmt in protocol.PixelFormat}


def test_pixel_format_table_matches_the_firmware():
    assert doc_pixel_formats() == {fmt.name: int(fmt) for fmt in fw_wire.PixelFormat}


# -- serial error codes ----------------------------------------------------------------------------------------


def test_serial_error_table_matches_the_driver():
    assert doc_serial_errors() == dict(protocol.SERIAL_ERROR_MESSAGES)


def test_serial_error_table_matches_the_firmware():
    assert doc_serial_errors() == dict(fw_controller.SERIAL_ERRORS)


def test_every_serial_error_code_the_firmware_can_raise_is_documented():
    # The firmware raises its refusals as _CommandError(<literal code>); find every literal in its source.
    source = Path(fw_controller.__file__).read_text(encoding="utf-8")
    raised = {int(code) for code in re.findall(r"_CommandError\((-?\d+)\)", source)}
    assert raised, "no error codes found in the firmware source"
    assert raised <= set(doc_serial_errors())
