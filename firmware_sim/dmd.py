"""The DMD as the firmware holds it: mirror geometry, frames in sequence memory, the layout table.

A queued frame keeps the bytes of the packet that brought it (no copy): packed mirror bits for a RAW frame,
packed feature bits for a FEATURE frame. The layout table (docs/protocol.md 1.4) turns feature bits into
mirror bitmaps; it is validated here, before the optics ever see it. The sequencer queues and shows these
frames, the capture reads their bits to compute what the camera sees.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
import numpy.typing as npt

from . import wire
from .wire import BLANK_FRAME_ID

__all__ = ["FrameKind", "Frame", "blank_frame", "DmdGeometry", "LayoutTable"]


class FrameKind(IntEnum):
    """What a frame's bytes hold: nothing (all mirrors OFF), packed mirror bits, or packed feature bits."""

    BLANK = 0
    RAW = 1
    FEATURE = 2


class Frame:
    """One DMD frame in sequence memory or in the lag pipeline.

    ``data[offset:]`` holds packed mirror bits (RAW) or packed feature bits (FEATURE); ``budget_bytes`` is
    what it counts against the raw-frame memory budget while queued.
    """

    __slots__ = ("kind", "frame_id", "data", "offset", "budget_bytes")

    def __init__(
        self, kind: FrameKind, frame_id: int, data: bytes = b"", offset: int = 0, budget_bytes: int = 0
    ) -> None:
        self.kind = kind
        self.frame_id = frame_id
        self.data = data
        self.offset = offset
        self.budget_bytes = budget_bytes


def blank_frame() -> Frame:
    """The frame a DMD shows before anything was queued (it fills the lag pipeline at power-on)."""
    return Frame(FrameKind.BLANK, BLANK_FRAME_ID)


class DmdGeometry:
    """The mirror array: W x H mirrors, row-major, packed MSB first into ``frame_bytes`` per raw frame."""

    def __init__(self, width: int, height: int) -> None:
        self.width = int(width)
        self.height = int(height)
        self.n_mirrors = self.width * self.height
        self.frame_bytes = (self.n_mirrors + 7) // 8
        pad_bits = 8 * self.frame_bytes - self.n_mirrors
        self._last_byte_mask = (0xFF << pad_bits) & 0xFF

    def packed_mirrors(self, frames: list[Frame]) -> npt.NDArray[np.uint8]:
        """The packed mirror bits (n, frame_bytes) of RAW frames, padding bits cleared (they are not mirrors)."""
        packed = np.stack(
            [np.frombuffer(f.data, dtype=np.uint8, count=self.frame_bytes, offset=f.offset) for f in frames]
        )
        packed[:, -1] &= self._last_byte_mask
        return packed


class LayoutTable:
    """The loaded layout table: feature f drives the mirrors of its runs (feature, first_mirror, n_mirrors).

    ``n_features`` is 0 and ``runs`` None while no table is loaded (feature frames are then refused).
    """

    def __init__(self, geometry: DmdGeometry) -> None:
        self._geometry = geometry
        self.n_features = 0
        self.runs: npt.NDArray[np.uint32] | None = None
        self._expansion: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]] | None = None

    @property
    def loaded(self) -> bool:
        return self.runs is not None

    def problem(self, n_features: int, runs: npt.NDArray[np.uint32]) -> str:
        """Why a layout table is invalid, or "" when it is valid (vectorised: sort runs, compare ends)."""
        if not 1 <= n_features <= wire.MAX_LAYOUT_FEATURES:
            return f"n_features={n_features} outside 1..{wire.MAX_LAYOUT_FEATURES}"
        if len(runs) == 0:
            return ""
        feature = runs[:, 0].astype(np.int64)
        first = runs[:, 1].astype(np.int64)
        length = runs[:, 2].astype(np.int64)
        if feature.max() >= n_features:
            return f"a run names feature {int(feature.max())} of {n_features}"
        if length.min() < 1:
            return "a run has no mirrors"
        end = first + length
        n_mirrors = self._geometry.n_mirrors
        if end.max() > n_mirrors:
            return f"a run ends at mirror {int(end.max())}, past the {n_mirrors} mirrors"
        order = np.argsort(first, kind="stable")
        if np.any(first[order][1:] < end[order][:-1]):
            return "two runs share mirrors"
        return ""

    def is_loaded_as(self, n_features: int, runs: npt.NDArray[np.uint32]) -> bool:
        """This very table is already loaded (loading it again changes nothing)."""
        return self.runs is not None and n_features == self.n_features and np.array_equal(runs, self.runs)

    def load(self, n_features: int, runs: npt.NDArray[np.uint32]) -> None:
        """Make a validated table current (see :meth:`problem`)."""
        self.n_features = n_features
        self.runs = np.ascontiguousarray(runs, dtype=np.uint32)
        self._expansion = None

    def clear(self) -> None:
        """Forget the table."""
        self.n_features = 0
        self.runs = None
        self._expansion = None

    def expand(self, bits: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        """Packed mirror frames (n, frame_bytes) that the table makes of feature bits (n, n_features).

        Raises:
            ValueError: no table is loaded.
        """
        if self.runs is None:
            raise ValueError("no layout table loaded")
        if self._expansion is None:
            runs = self.runs.astype(np.int64)
            counts = runs[:, 2]
            starts = np.repeat(runs[:, 1] - np.concatenate(([0], np.cumsum(counts)[:-1])), counts)
            mirror_index = starts + np.arange(int(counts.sum()), dtype=np.int64)
            self._expansion = (mirror_index, np.repeat(runs[:, 0], counts))
        mirror_index, mirror_feature = self._expansion
        bits = np.asarray(bits, dtype=np.uint8)
        mirrors = np.zeros((bits.shape[0], self._geometry.n_mirrors), dtype=np.uint8)
        mirrors[:, mirror_index] = bits[:, mirror_feature]
        return np.packbits(mirrors, axis=1)

    def feature_bits(self, frames: list[Frame]) -> npt.NDArray[np.uint8]:
        """The feature bits (n, n_features) of FEATURE frames queued under this table, unpacked."""
        n_bytes = (self.n_features + 7) // 8
        packed = np.stack([np.frombuffer(f.data, dtype=np.uint8, count=n_bytes, offset=f.offset) for f in frames])
        return np.unpackbits(packed, axis=1, count=self.n_features)
