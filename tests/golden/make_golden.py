"""Generate the golden byte vectors of wire protocol v1 from docs/protocol.md alone.

This is the third, independent reading of the specification: it uses only ``struct``, ``zlib`` and plain
Python (no numpy, and neither ``opu_driver`` nor ``firmware_sim``), and writes every bit by the rules of
the document, one pixel and one mirror at a time. Both codecs are then checked against its output
(tests/protocol/test_golden_driver.py and the firmware's test), so a misreading shared by the two cannot hide.

Run ``python tests/golden/make_golden.py`` to rewrite the ``.bin`` files and ``vectors.json`` beside it;
``--check`` only verifies that the files on disk are what this script produces.
"""
from __future__ import annotations

import json
import struct
import sys
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent

# ---- section 1.3: envelope -------------------------------------------------------------------------------
MAGIC = b"OPU1"
MAX_PAYLOAD = 16_777_216
TYPE_LAYOUT, TYPE_RAW_FRAME, TYPE_FEATURE_FRAME, TYPE_CAMERA_FRAME = 0x01, 0x02, 0x03, 0x10
TYPE_NAMES = {1: "LAYOUT", 2: "RAW_FRAME", 3: "FEATURE_FRAME", 0x10: "CAMERA_FRAME"}
BLANK = 0xFFFFFFFF


def crc(data: bytes) -> int:
    """CRC-32/ISO-HDLC, as the document says: zlib.crc32."""
    return zlib.crc32(data) & 0xFFFFFFFF


def header(ptype: int, length: int) -> bytes:
    """magic | type u8 | flags u8 = 0 | reserved u16 = 0 | length u32 | CRC of the 12 bytes before."""
    first12 = MAGIC + struct.pack("<BBHI", ptype, 0, 0, length)
    return first12 + struct.pack("<I", crc(first12))


def packet(ptype: int, payload: bytes) -> bytes:
    return header(ptype, len(payload)) + payload + struct.pack("<I", crc(payload))


def envelope_fields(ptype: int, payload: bytes) -> dict:
    h = header(ptype, len(payload))
    return {
        "flags": 0,
        "payload_length": len(payload),
        "header_crc": struct.unpack("<I", h[12:16])[0],
        "payload_crc": crc(payload),
    }


# ---- bit fields: mirror i is bit 7 - (i mod 8) of byte i div 8 (MSB first); padding bits 0 -----------------
def pack_msb_first(bits: list[int]) -> bytes:
    out = bytearray((len(bits) + 7) // 8)
    for i, bit in enumerate(bits):
        if bit:
            out[i // 8] |= 1 << (7 - i % 8)
    return bytes(out)


# ---- section 1.5: pixels ------------------------------------------------------------------------------------
PIXEL_FORMATS = {1: ("MONO8", 8), 2: ("MONO10", 10), 3: ("MONO12", 12), 4: ("MONO10P", 10), 5: ("MONO12P", 12)}


def pack_pixels(code: int, values: list[int]) -> bytes:
    name, bits = PIXEL_FORMATS[code]
    for v in values:
        assert 0 <= v < (1 << bits), (name, v)
    if code == 1:
        return bytes(values)
    if code in (2, 3):
        return b"".join(struct.pack("<H", v) for v in values)
    # Packed: pixel k occupies stream bits bits*k .. bits*k+bits-1, least significant bit first;
    # stream bit s is bit (s mod 8) of byte (s div 8). Written bit by bit, the literal reading of the text.
    n_bits = bits * len(values)
    out = bytearray((n_bits + 7) // 8)
    for k, v in enumerate(values):
        for j in range(bits):
            if (v >> j) & 1:
                s = bits * k + j
                out[s // 8] |= 1 << (s % 8)
    return bytes(out)


def _self_check_pixels() -> None:
    """The document's own example for MONO12P: p0, p1 -> p0 & 0xFF, (p0 >> 8) | ((p1 & 0x0F) << 4), p1 >> 4."""
    p0, p1 = 0xABC, 0x123
    assert pack_pixels(5, [p0, p1]) == bytes([p0 & 0xFF, (p0 >> 8) | ((p1 & 0x0F) << 4), p1 >> 4])
    assert len(pack_pixels(4, [1, 2, 3, 4])) == 5  # "for MONO10P four pixels make five bytes"


# ---- vectors ------------------------------------------------------------------------------------------------
def layout_vector() -> tuple[bytes, dict]:
    n_features = 5
    runs = [(0, 0, 7), (3, 13, 20), (1, 40, 3)]  # feature 2 and 4 own no run, as the document allows
    payload = struct.pack("<II", n_features, len(runs)) + b"".join(struct.pack("<III", *r) for r in runs)
    data = packet(TYPE_LAYOUT, payload)
    return data, {
        "packet_type": TYPE_LAYOUT,
        "envelope": envelope_fields(TYPE_LAYOUT, payload),
        "fields": {"n_features": n_features, "n_runs": len(runs), "runs": [list(r) for r in runs]},
    }


def raw_frame_vector() -> tuple[bytes, dict]:
    width, height = 13, 5  # 65 mirrors: 9 bytes, 7 padding bits in the last one
    on = [i for i in range(width * height) if (i * 7) % 5 == 0 or i in (63, 64)]
    bits = [1 if i in on else 0 for i in range(width * height)]
    mirror_bits = pack_msb_first(bits)
    dmd_frame_id = 0x01020304
    payload = struct.pack("<II", dmd_frame_id, 0) + mirror_bits
    data = packet(TYPE_RAW_FRAME, payload)
    return data, {
        "packet_type": TYPE_RAW_FRAME,
        "envelope": envelope_fields(TYPE_RAW_FRAME, payload),
        "fields": {
            "dmd_frame_id": dmd_frame_id,
            "dmd_width": width,
            "dmd_height": height,
            "on_mirrors": on,
            "mirror_bits_hex": mirror_bits.hex(),
        },
    }


def feature_frame_vector(dmd_frame_id: int = 7, values: list[int] | None = None) -> tuple[bytes, dict]:
    if values is None:
        values = [1, 0, 1, 1, 0, 0, 0, 1, 1, 0, 1]  # 11 features: 2 bytes, 5 padding bits
    n_features = len(values)
    feature_bits = pack_msb_first(values)
    payload = struct.pack("<II", dmd_frame_id, n_features) + feature_bits
    data = packet(TYPE_FEATURE_FRAME, payload)
    return data, {
        "packet_type": TYPE_FEATURE_FRAME,
        "envelope": envelope_fields(TYPE_FEATURE_FRAME, payload),
        "fields": {
            "dmd_frame_id": dmd_frame_id,
            "n_features": n_features,
            "feature_values": values,
            "feature_bits_hex": feature_bits.hex(),
        },
    }


# 3 x 3 ROI: 9 pixels, an odd count, so both packed formats end in padding bits
CAMERA_VALUES = {
    1: [0, 1, 0x80, 0xFF, 0x7F, 0x55, 0xAA, 0xFE, 0x01],
    2: [0, 1, 0x3FF, 0x200, 0x155, 0x2AA, 0x0FF, 0x100, 0x3FE],
    3: [0, 1, 0xFFF, 0x800, 0xABC, 0x123, 0x555, 0xAAA, 0xF0F],
    4: [0x3FF, 0, 0x201, 0x155, 0x2AA, 0x3FE, 0x100, 0x0FF, 0x3FF],
    5: [0xFFF, 0, 0x801, 0xABC, 0x123, 0x555, 0xAAA, 0xF0F, 0xFFF],
}


def camera_frame_vector(code: int) -> tuple[bytes, dict]:
    name, bits = PIXEL_FORMATS[code]
    values = CAMERA_VALUES[code]
    full_scale = (1 << bits) - 1
    saturated = any(v == full_scale for v in values)
    dark = code == 2  # one frame with the DARK flag
    flags = (1 if saturated else 0) | (2 if dark else 0)
    fields = {
        "camera_frame_id": 1000 + code,
        "dmd_frame_id": BLANK if code == 3 else 40 + code,  # one frame exposed under a blank DMD
        "timestamp_us": 0x0000_0001_2345_6789 + code,  # above 2**32: exercises the high word of the u64
        "exposure_us": 400 + code,
        "roi_x": 17,
        "roi_y": 0x0102,
        "roi_w": 3,
        "roi_h": 3,
        "pixel_format": code,
        "pixel_format_name": name,
        "flags": flags,
        "saturated": saturated,
        "dark": dark,
    }
    pixels = pack_pixels(code, values)
    payload = struct.pack(
        "<IIQIHHHHBBH",
        fields["camera_frame_id"],
        fields["dmd_frame_id"],
        fields["timestamp_us"],
        fields["exposure_us"],
        fields["roi_x"],
        fields["roi_y"],
        fields["roi_w"],
        fields["roi_h"],
        code,
        flags,
        0,
    ) + pixels
    assert len(payload) == 32 + len(pixels)
    fields["pixel_values"] = values
    fields["pixels_hex"] = pixels.hex()
    data = packet(TYPE_CAMERA_FRAME, payload)
    return data, {"packet_type": TYPE_CAMERA_FRAME, "envelope": envelope_fields(TYPE_CAMERA_FRAME, payload),
                  "fields": fields}


def _assert_magics(data: bytes, expected: list[int]) -> None:
    """The stream holds the magic exactly where the vector means it to, and nowhere by accident."""
    found, start = [], 0
    while (i := data.find(MAGIC, start)) >= 0:
        found.append(i)
        start = i + 1
    assert found == expected, (found, expected)


def stream_out_vector() -> tuple[bytes, dict]:
    """Junk, two fake magics and a partial one, then packets with junk between them (section 1.4)."""
    pkt_a, info_a = feature_frame_vector(100, [0, 1, 1, 0, 1])
    pkt_b, info_b = raw_frame_vector()
    junk1 = b"\x00\xffjunkOP"  # ends in a partial magic, which is junk too since "OPU1" does not follow
    # A magic whose header CRC is wrong: receivers drop one byte and look again.
    fake1 = MAGIC + struct.pack("<BBHI", TYPE_FEATURE_FRAME, 0, 0, 9) + b"\xde\xad\xbe\xef"
    junk2 = b"\x4f\x50\x55"  # "OPU", then the next magic
    # A magic with a correct header CRC but a length above the limit: also dropped by one byte.
    first12 = MAGIC + struct.pack("<BBHI", TYPE_RAW_FRAME, 0, 0, MAX_PAYLOAD + 1)
    fake2 = first12 + struct.pack("<I", crc(first12))
    junk3 = b"\x01\x02\x03O"
    assert struct.unpack("<I", fake1[12:16])[0] != crc(fake1[:12])
    data = junk1 + fake1 + junk2 + fake2 + pkt_a + junk3 + pkt_b
    _assert_magics(data, [len(junk1), len(junk1) + len(fake1) + len(junk2), data.index(pkt_a), data.index(pkt_b)])
    junk = len(junk1) + len(fake1) + len(junk2) + len(fake2) + len(junk3)
    return data, {
        "direction": "OUT",
        "junk_bytes": junk,
        "items": [
            {"packet": {"packet_type": TYPE_FEATURE_FRAME, "fields": info_a["fields"]}},
            {"packet": {"packet_type": TYPE_RAW_FRAME, "fields": info_b["fields"]}},
        ],
    }


def stream_in_vector() -> tuple[bytes, dict]:
    """Camera frames in the IN direction with junk and a fake magic before and between them."""
    pkt_a, info_a = camera_frame_vector(1)
    pkt_b, info_b = camera_frame_vector(5)
    junk1 = b"OPU1" + b"\x10" * 11 + b"\x00"  # a magic with a wrong header CRC
    junk2 = b"\x00" * 5 + b"OPU"
    data = junk1 + pkt_a + junk2 + pkt_b
    _assert_magics(data, [0, len(junk1), data.index(pkt_b)])
    return data, {
        "direction": "IN",
        "junk_bytes": len(junk1) + len(junk2),
        "items": [
            {"packet": {"packet_type": TYPE_CAMERA_FRAME, "fields": info_a["fields"]}},
            {"packet": {"packet_type": TYPE_CAMERA_FRAME, "fields": info_b["fields"]}},
        ],
    }


def corrupt_crc_vector() -> tuple[bytes, dict]:
    """A FEATURE_FRAME whose payload CRC is wrong (one payload bit flipped after the CRC was computed),
    followed by a good one: the first is reported (E_CRC on the device, a fault on the host) and skipped."""
    bad, info_bad = feature_frame_vector(8, [1, 1, 0, 1, 0, 1, 1, 1, 0])
    corrupt = bytearray(bad)
    corrupt[16 + 8] ^= 0x01  # a bit of the first feature byte; the header is intact
    good, info_good = feature_frame_vector(9, [0, 0, 1, 1, 0, 1, 0, 0, 1])
    data = bytes(corrupt) + good
    return data, {
        "direction": "OUT",
        "junk_bytes": 0,
        "items": [
            {"fault": {"kind": "crc", "packet_type": TYPE_FEATURE_FRAME, "device_error": "E_CRC", "code": 1}},
            {"packet": {"packet_type": TYPE_FEATURE_FRAME, "fields": info_good["fields"]}},
        ],
    }


# ---- section 2: controller line -----------------------------------------------------------------------------
# A session in order against a freshly created emulator with the default SimConfig (seed 0, model OPU-1,
# firmware 1.0.0, power 50 mW of 100 mW max, laser off, shutter closed, interlock OK, trigger INT).
# "keyword"/"args" give the call that produces "command" (None for lines a driver never formats itself).
CONTROLLER_SESSION = [
    ("*IDN?", [], "*IDN?\n", "OPU Open Stack,OPU-1,SIM-00000000,1.0.0\n"),
    ("SYSTEM:VERSION?", [], "SYSTEM:VERSION?\n", "1\n"),
    ("SYSTEM:ERROR?", [], "SYSTEM:ERROR?\n", '0,"No error"\n'),
    ("LASER:STATE?", [], "LASER:STATE?\n", "0\n"),
    ("LASER:POWER:MAX?", [], "LASER:POWER:MAX?\n", "100.000\n"),
    ("LASER:POWER", [12.5], "LASER:POWER 12.5\n", "OK\n"),
    ("LAS:POW?", [], "LAS:POW?\n", "12.500\n"),
    ("LASER:POWER", [1000], "LASER:POWER 1000\n", 'ERR -222,"Data out of range"\n'),
    ("FOO:BAR", [], "FOO:BAR\n", 'ERR -113,"Undefined header"\n'),
    ("LASER:STATE", [], "LASER:STATE\n", 'ERR -109,"Missing parameter"\n'),
    ("SYSTEM:ERROR?", [], "SYSTEM:ERROR?\n", '-222,"Data out of range"\n'),
    ("SYST:ERR?", [], "SYST:ERR?\n", '-113,"Undefined header"\n'),
    ("SYSTEM:ERROR?", [], "SYSTEM:ERROR?\n", '-109,"Missing parameter"\n'),
    ("SYSTEM:ERROR?", [], "SYSTEM:ERROR?\n", '0,"No error"\n'),
    ("SHUTTER:STATE", ["OPEN"], "SHUTTER:STATE OPEN\n", "OK\n"),
    ("SHUT:STAT?", [], "SHUT:STAT?\n", "OPEN\n"),
    ("INTERLOCK?", [], "INTERLOCK?\n", "OK\n"),
    ("LASER:STATE", ["ON"], "LASER:STATE ON\n", "OK\n"),
    ("LASER:STATE?", [], "LASER:STATE?\n", "1\n"),
    ("TRIGGER:MODE", ["SOFT"], "TRIGGER:MODE SOFT\n", "OK\n"),
    ("TRIG:MODE?", [], "TRIG:MODE?\n", "SOFT\n"),
    ("*RST", [], "*RST\n", "OK\n"),
    (None, None, "laser:state?\r\n", "0\n"),  # keywords are case-insensitive; a '\r' before '\n' is ignored
    ("SHUTTER:STATE?", [], "SHUTTER:STATE?\n", "CLOSED\n"),
    ("TRIGGER:MODE?", [], "TRIGGER:MODE?\n", "INT\n"),
    ("LASER:POWER?", [], "LASER:POWER?\n", "50.000\n"),
    ("LASER:STATE", [1], "LASER:STATE 1\n", "OK\n"),
    ("LASER:STATE", [0], "LASER:STATE 0\n", "OK\n"),
    (None, None, "X" * 257 + "\n", 'ERR -223,"Too much data"\n'),
    ("SYSTEM:ERROR?", [], "SYSTEM:ERROR?\n", '-223,"Too much data"\n'),
]


def controller_vectors() -> list[dict]:
    out = []
    for keyword, args, command, reply in CONTROLLER_SESSION:
        line = reply.rstrip("\n")
        entry: dict = {"keyword": keyword, "args": args, "command": command, "reply": reply}
        if keyword in ("SYSTEM:ERROR?", "SYST:ERR?"):
            code_text, message = line.split(",", 1)
            entry["expect"] = {"error_entry": [int(code_text), message.strip('"')]}
        elif line.startswith("ERR "):
            code_text, message = line[4:].split(",", 1)
            entry["expect"] = {"refused": [int(code_text), message.strip('"')]}
        else:
            entry["expect"] = {"value": line}
        out.append(entry)
    return out


# ---- output -------------------------------------------------------------------------------------------------
def build() -> tuple[dict[str, bytes], dict]:
    _self_check_pixels()
    files: dict[str, bytes] = {}
    packets = []

    def add_packet(name: str, made: tuple[bytes, dict]) -> None:
        data, info = made
        files[name + ".bin"] = data
        packets.append({"name": name, "file": name + ".bin", "type_name": TYPE_NAMES[info["packet_type"]], **info})

    add_packet("layout_3runs", layout_vector())
    add_packet("raw_frame_13x5", raw_frame_vector())
    add_packet("feature_frame_11", feature_frame_vector())
    for code, (name, _bits) in PIXEL_FORMATS.items():
        add_packet(f"camera_frame_{name.lower()}", camera_frame_vector(code))

    streams = []
    for name, made in (
        ("stream_out_junk", stream_out_vector()),
        ("stream_in_junk", stream_in_vector()),
        ("corrupt_payload_crc", corrupt_crc_vector()),
    ):
        data, info = made
        files[name + ".bin"] = data
        streams.append({"name": name, "file": name + ".bin", **info})

    files["crc_check.bin"] = b"123456789"
    description = {
        "protocol_version": 1,
        "generator": "tests/golden/make_golden.py (struct + zlib only, from docs/protocol.md)",
        "byte_fields": "fields ending in _hex are the exact bytes in hexadecimal",
        "crc_check": {"file": "crc_check.bin", "input_ascii": "123456789", "crc32": crc(b"123456789")},
        "packets": packets,
        "streams": streams,
        "controller": {
            "note": "one session in order against a fresh emulator with the default SimConfig (seed 0); "
            "command and reply are the exact bytes on the line",
            "exchanges": controller_vectors(),
        },
    }
    assert description["crc_check"]["crc32"] == 0xCBF43926
    return files, description


def main(argv: list[str]) -> int:
    files, description = build()
    text = json.dumps(description, indent=1) + "\n"
    if "--check" in argv:
        stale = [name for name, data in files.items() if (HERE / name).read_bytes() != data]
        if (HERE / "vectors.json").read_text() != text:
            stale.append("vectors.json")
        if stale:
            print("out of date:", ", ".join(stale))
            return 1
        print("golden vectors are up to date")
        return 0
    for name, data in files.items():
        (HERE / name).write_bytes(data)
    (HERE / "vectors.json").write_text(text)
    print(f"wrote {len(files)} vector files and vectors.json to {HERE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
