"""DLPC900 upload size and host time: 24 pictures of 1920x1080, random mirrors and 8x8 macropixels.

Prints the bytes the emulated board counts on its OUT endpoint for the upload (0x1A2A + 0x1A2B reports), the time
that takes at the full-speed HID ceiling (64 kB/s), and the median host time of ``prepare`` over several runs.
Run from the repository root: ``PYTHONPATH=$PWD python benchmarks/dlpc900_upload.py [runs]``.
"""

from __future__ import annotations

import statistics
import sys

import numpy as np

from firmware_sim.lab.dlpc900 import Dlpc900Backend, Dlpc900Emulator
from opu_driver.devices.lab.dlpc900 import FULL_SPEED_HID_BYTES_PER_S, Dlpc900Dmd

LUT_REPORTS = 1 + 24 + 1  # stop, 24 LUT entries, LUT configuration: one 64-byte report each


def main(runs: int = 7) -> None:
    rng = np.random.default_rng(2024)
    sets = {
        "random": rng.random((24, 1080, 1920)) < 0.5,
        "macropixel 8x8": np.kron(rng.random((24, 135, 240)) < 0.5, np.ones((8, 8), dtype=bool)),
    }
    emulator = Dlpc900Emulator()
    with Dlpc900Dmd(backend=Dlpc900Backend([emulator]), max_upload_s=None) as dmd:
        for name, pictures in sets.items():
            packed = np.packbits(pictures.reshape(24, -1), axis=1)
            times = []
            for _ in range(runs):
                prepared = dmd.prepare(packed)
                times.append(prepared.host_time_s)
            emulator.reset_counters()
            dmd.load(prepared, 24, 105)
            upload = emulator.bytes_out - 64 * LUT_REPORTS
            assert upload == prepared.wire_bytes
            print(
                f"{name:>15}: image {len(prepared.images[0])} bytes, upload {upload} bytes on the bus, "
                f"{upload / FULL_SPEED_HID_BYTES_PER_S:.1f} s at 64 kB/s; "
                f"prepare median {statistics.median(times):.3f} s "
                f"(min {min(times):.3f}, max {max(times):.3f}, {runs} runs)"
            )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 7)
