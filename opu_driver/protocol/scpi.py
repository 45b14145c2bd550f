"""Codec of the serial controller line (protocol section 2): command lines out, reply lines in.

The host sends one printable-ASCII command a line, ended by ``\\n``; the device answers every line with one
line: a value, ``OK``, or ``ERR <code>,"<message>"`` (SCPI error numbering). ``SYSTEM:ERROR?`` answers
``<code>,"<message>"``. This module formats commands, splits the incoming byte stream into lines, and turns
error replies into typed exceptions. It does no I/O.
"""

from __future__ import annotations

import math
import numbers
import re

import numpy as np

from opu_driver.errors import DeviceRefusedError, InvalidInputError, ProtocolError
from opu_driver.protocol.constants import SERIAL_MAX_COMMAND_BYTES

__all__ = [
    "format_command",
    "format_value",
    "LineReader",
    "parse_reply",
    "parse_error_entry",
    "MAX_REPLY_LINE_BYTES",
    "SERIAL_ERROR_MESSAGES",
]

#: Longest reply line accepted from the device; anything longer is not a reply of this protocol.
MAX_REPLY_LINE_BYTES = 4096

#: Serial error codes of section 2 and their messages.
SERIAL_ERROR_MESSAGES: dict[int, str] = {
    0: "No error",
    -100: "Command error",
    -101: "Invalid character",
    -102: "Syntax error",
    -108: "Parameter not allowed",
    -109: "Missing parameter",
    -113: "Undefined header",
    -200: "Execution error",
    -222: "Data out of range",
    -223: "Too much data",
    -350: "Queue overflow",
}

_KEYWORD = re.compile(r"\*?[A-Za-z][A-Za-z0-9]*(:[A-Za-z][A-Za-z0-9]*)*\??")
_ARG = re.compile(r"[\x21-\x7e]+")  # printable, no spaces (they separate the header from the arguments)
_PRINTABLE = re.compile(r"[\x20-\x7e]*")
_ERROR_BODY = re.compile(r'([+-]?\d+),"(.*)"')


def format_value(value: object) -> str:
    """Format one command argument: str as is, bool as 1/0, ints in decimal, floats with up to 10 digits.

    Raises:
        InvalidInputError: NaN or infinite floats, empty strings, strings with spaces, commas or non-printable
            characters, or unsupported types.
    """
    if isinstance(value, (bool, np.bool_)):
        return "1" if value else "0"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        x = float(value)
        if not math.isfinite(x):
            raise InvalidInputError(f"command argument must be finite, got {x}")
        text = format(x, ".10g")
        return "0" if text == "-0" else text
    if isinstance(value, str):
        if not _ARG.fullmatch(value) or "," in value:
            raise InvalidInputError(f"command argument {value!r} must be printable ASCII without spaces or commas")
        return value
    raise InvalidInputError(f"unsupported command argument type {type(value).__name__}")


def format_command(keyword: str, *args: object) -> bytes:
    """Build one command line: ``KEYWORD`` or ``KEYWORD arg1,arg2``, ended by ``\\n``.

    Example: ``format_command("LASER:POWER", 12.5) == b"LASER:POWER 12.5\\n"``.

    Raises:
        InvalidInputError: a keyword that is not a SCPI header (letters, digits, ``:``, optional leading ``*``
            and trailing ``?``), a bad argument, or a line longer than the device accepts (256 bytes).
    """
    if not isinstance(keyword, str) or not _KEYWORD.fullmatch(keyword):
        raise InvalidInputError(f"{keyword!r} is not a command keyword")
    line = keyword if not args else keyword + " " + ",".join(format_value(a) for a in args)
    if len(line) > SERIAL_MAX_COMMAND_BYTES:
        raise InvalidInputError(f"command line of {len(line)} bytes exceeds {SERIAL_MAX_COMMAND_BYTES}")
    return line.encode("ascii") + b"\n"


class LineReader:
    """Split a byte stream into lines ended by ``\\n``, dropping a ``\\r`` before it.

    Args:
        max_line_bytes: longest line accepted (without its end); a longer one raises ProtocolError and is
            discarded up to its newline, so one runaway line cannot grow the buffer without bound.
    """

    def __init__(self, max_line_bytes: int = MAX_REPLY_LINE_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self._partial = bytearray()
        self._discarding = False  # inside an overlong line: drop bytes until its newline
        self._pending: list[str] = []  # good lines of a call that also met an overlong one, for the next call

    @property
    def partial(self) -> bytes:
        """Bytes received after the last complete line."""
        return bytes(self._partial)

    def clear(self) -> None:
        """Forget the partial line, pending lines and any overlong line being discarded."""
        self._partial.clear()
        self._pending.clear()
        self._discarding = False

    def feed(self, data: bytes | bytearray | memoryview) -> list[str]:
        """Add received bytes and return the lines they complete (ASCII; undecodable bytes become U+FFFD).

        Raises:
            ProtocolError: a line exceeded max_line_bytes. The other lines completed by this call are kept and
                returned, in order, by the next call.
        """
        lines, self._pending = self._pending, []
        overflow = False
        chunk = bytes(data)
        limit = self.max_line_bytes
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            stop = len(chunk) if nl < 0 else nl
            if self._discarding:
                self._discarding = nl < 0
            else:
                self._partial += chunk[start:stop]
                if nl >= 0:
                    raw = bytes(self._partial)
                    self._partial.clear()
                    if raw.endswith(b"\r"):
                        raw = raw[:-1]
                    if len(raw) > limit:
                        overflow = True
                    else:
                        lines.append(raw.decode("ascii", errors="replace"))
                elif len(self._partial) > limit and not (
                    len(self._partial) == limit + 1 and self._partial.endswith(b"\r")
                ):
                    # Still no newline and already too long: drop it now rather than buffer without bound.
                    self._partial.clear()
                    self._discarding = True
                    overflow = True
            if nl < 0:
                break
            start = nl + 1
        if overflow:
            self._pending = lines
            raise ProtocolError(f"reply line longer than {limit} bytes")
        return lines


def _check_printable(line: str) -> None:
    if not _PRINTABLE.fullmatch(line):
        raise ProtocolError(f"reply {line!r} holds characters that are not printable ASCII")


def parse_error_entry(line: str) -> tuple[int, str]:
    """Parse a ``SYSTEM:ERROR?`` reply ``<code>,"<message>"`` into (code, message); ``0`` means no error.

    Raises:
        ProtocolError: the line is not of that form.
    """
    _check_printable(line)
    match = _ERROR_BODY.fullmatch(line.strip())
    if match is None:
        raise ProtocolError(f'expected <code>,"<message>", got {line!r}')
    return int(match.group(1)), match.group(2).replace('""', '"')


def parse_reply(line: str) -> str:
    """Check one reply line and return it (the value of a query, or ``OK``).

    Raises:
        DeviceRefusedError: for ``ERR <code>,"<message>"``, with the device's code and message.
        ProtocolError: an empty, garbled or malformed line.
    """
    _check_printable(line)
    text = line.strip()
    if not text:
        raise ProtocolError("empty reply line")
    if text == "ERR" or text.startswith("ERR "):
        try:
            code, message = parse_error_entry(text[4:])
        except ProtocolError:
            raise ProtocolError(f"malformed error reply {line!r}") from None
        raise DeviceRefusedError(message, code)
    return text
