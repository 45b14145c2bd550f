"""CRC-32 of the wire protocol (CRC-32/ISO-HDLC, the CRC of zlib), section "byte order and CRCs"."""

from __future__ import annotations

import zlib

__all__ = ["crc32", "CRC32_CHECK_INPUT", "CRC32_CHECK_VALUE"]

#: The standard check: CRC-32 of the ASCII bytes "123456789".
CRC32_CHECK_INPUT = b"123456789"
CRC32_CHECK_VALUE = 0xCBF43926


def crc32(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    """Return the CRC-32 of ``data`` as an unsigned 32-bit int.

    Args:
        data: the bytes to checksum (any buffer; memoryviews avoid a copy).
        value: a running CRC to continue from, to checksum data that arrives in pieces.
    """
    return zlib.crc32(data, value) & 0xFFFFFFFF
