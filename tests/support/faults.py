"""The fault matrix's shared device, inputs and rates: the driver's columns and the service's use the same."""

from __future__ import annotations

import numpy as np

from opu_driver.errors import (
    CommunicationError,
    CommunicationTimeoutError,
    DeviceResetError,
    DroppedFramesError,
    ProtocolError,
)
from opu_driver.transport import StallError
from tests.support import small_sim

BASE = small_sim("noise=0&seed=5")
N_COMPONENTS = 40
CHUNK_FRAMES = 8  # many short sequences: many events of every sort for the faults to hit
RETRIES = 10
TIMEOUT_S = 2.0
# Faults are drawn per event: per camera frame (crc, truncate, drop, dup, reorder), per bulk IN read (timeout,
# slow), per bulk transfer (stall), per sequence start (reset). A transform of 48 vectors in chunks of 8 makes
# about 48 frames, 6 sequences and 12 transfers; these rates make each fault fire several times (checked).
RATES = {
    "timeout": 0.3,
    "stall": 0.3,
    "crc": 0.06,
    "truncate": 0.06,
    "drop": 0.06,
    "dup": 0.08,
    "reorder": 0.08,
    "reset": 0.3,
    "slow": 0.5,
}
MIX = "timeout:0.05,stall:0.03,crc:0.02,truncate:0.02,drop:0.02,dup:0.02,reorder:0.02,reset:0.05,slow:0.05"
# Faults that lose or spoil frames: recovered (retries >= 1), else a typed error. The others are harmless by design:
# dup and reorder are sorted out by frame ids, slow waits, and an injected USB read timeout (no data for a moment)
# is only a quiet moment of the stream, read on.
ERRORS_WITHOUT_RETRY = {
    "stall": StallError,
    "crc": ProtocolError,  # CorruptPacketError
    "truncate": CommunicationError,  # CorruptPacketError (CRC over the cut packet), or frames never arriving
    "drop": (CommunicationTimeoutError, DroppedFramesError),
    "reset": (CommunicationTimeoutError, DroppedFramesError, ProtocolError, DeviceResetError),
}
FRAME_LEVEL = ("crc", "truncate", "drop")
"""Faults that cost the frames they touch only: shown again within the attempt, no retry of the sequence."""
CLEARED_IN_ATTEMPT = ("stall",)
"""Faults cleared where they happen (the halted pipe cleared, the frames queued again or read on): no retry."""
HARMLESS = ("dup", "reorder", "slow", "timeout")
"""Faults recovered even with retries=0."""


def fault_inputs():
    """Binary X for transform and ternary E for linear_transform, the same in every column."""
    rng = np.random.default_rng(11)
    X = rng.integers(0, 2, size=(48, 30), dtype=np.uint8)
    E = rng.integers(-1, 2, size=(6, 20)).astype(np.float32)  # ternary: 4 frames per vector, 24 frames
    E[np.abs(E).sum(axis=1) == 0, 0] = 1.0
    return X, E
