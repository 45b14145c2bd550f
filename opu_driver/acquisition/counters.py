"""What the acquisition did and met: counters kept by the runner, handed out as read-only snapshots."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["AcquisitionCounters", "new_tally"]

_FAULT = {"fault": True}  # a field that counts a fault or what was done about one (logged at close when not 0)


def _count(fault: bool = False) -> Any:
    return dataclasses.field(default=0, metadata=_FAULT if fault else {})


@dataclass(frozen=True)
class AcquisitionCounters:
    """What the runner did, for diagnostics (``Opu.counters``, a snapshot).

    The fault counters say what went wrong on the way and what was done about it: ``retries`` attempts re-run
    after a fault, ``frames_resent`` frames queued again by them and ``frames_recovered`` results they
    delivered; ``requests_recovered`` requests that succeeded only thanks to a retry, ``requests_failed``
    requests that raised after a fault. ``frames_missing`` counts frames that did not arrive in an attempt
    (dropped, lost to a corrupt packet, a reset or a timeout); ``corrupt_packets``, ``timeouts``, ``stalls``,
    ``resets_detected``, ``duplicate_frames`` and ``reordered_frames`` count the faults seen; ``light_restored``
    the times the laser, shutter or power were found changed without the driver (a controller restart) and
    written back; ``reconnects`` the times the device was unplugged and reopened after it came back.
    """

    sequences: int = _count()
    frames_sent: int = _count()
    flush_frames_sent: int = _count()
    frames_matched: int = _count()
    frames_discarded: int = _count()
    saturated_frames: int = _count()
    dark_frames: int = _count()
    recoveries: int = _count()
    retries: int = _count(fault=True)
    frames_resent: int = _count(fault=True)
    frames_recovered: int = _count()
    frames_missing: int = _count()
    requests_recovered: int = _count(fault=True)
    requests_failed: int = _count(fault=True)
    corrupt_packets: int = _count(fault=True)
    timeouts: int = _count(fault=True)
    stalls: int = _count(fault=True)
    resets_detected: int = _count(fault=True)
    duplicate_frames: int = _count(fault=True)
    reordered_frames: int = _count(fault=True)
    light_restored: int = _count(fault=True)
    reconnects: int = _count(fault=True)

    def faults(self) -> dict[str, int]:
        """The fault counters that are not zero, by name (what the close summary logs)."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.metadata.get("fault") and getattr(self, f.name)
        }


_Tally = dataclasses.make_dataclass(
    "_Tally", [(f.name, int, dataclasses.field(default=0)) for f in dataclasses.fields(AcquisitionCounters)]
)


def new_tally() -> Any:
    """A mutable twin of :class:`AcquisitionCounters` (same fields, all 0) for the runner to count in;
    ``AcquisitionCounters(**dataclasses.asdict(tally))`` is its snapshot."""
    return _Tally()
