"""Sequences of frames: matching camera frames to DMD frames, the lag, frame-level loss accounting, retries.

:class:`SequenceRunner` runs chunks of frames on a :class:`~opu_driver.devices.Dmd` and
:class:`~opu_driver.devices.Camera`; :func:`run_with_retries` is the one retry engine (also used by the Opu to
prepare a request); :class:`AcquisitionCounters` is what both counted.
"""

from .counters import AcquisitionCounters
from .retry import RETRYABLE, RetryPolicy, run_with_retries
from .runner import Expected, FrameSink, SequenceRunner, check_frame

__all__ = [
    "AcquisitionCounters",
    "Expected",
    "FrameSink",
    "RETRYABLE",
    "RetryPolicy",
    "SequenceRunner",
    "check_frame",
    "run_with_retries",
]
