"""Host time to put one full DMD picture into each lab backend's device format (its ``prepare``), against the
picture time it must beat: the shortest time the DMD shows one binary picture."""

from __future__ import annotations

import functools

import numpy as np

from .timing import BenchResult, median_time_s

__all__ = ["bench_dmd_pack"]

_DLPC900_MIN_PICTURE_US = 105  # the DLPC900's shortest 1-bit exposure


def bench_dmd_pack(quick: bool, repeats: int) -> list[BenchResult]:
    """ALP (1024x768 and 2560x1600) and DLPC900 (1920x1080, 24 pictures per image): seconds per picture."""
    from firmware_sim.lab.dlpc900 import Dlpc900Backend, Dlpc900Emulator
    from opu_driver.devices.lab.alp import pack_topdown
    from opu_driver.devices.lab.dlpc900 import FULL_SPEED_HID_BYTES_PER_S, Dlpc900Dmd

    rng = np.random.default_rng(11)
    results = []
    n = 8 if quick else 64
    for width, height in ((1024, 768), (2560, 1600)):
        packed = np.packbits(rng.random((n, width * height)) < 0.5, axis=1)
        per_s = median_time_s(functools.partial(pack_topdown, packed, width, height), repeats) / n
        results.append(
            BenchResult(
                f"ALP: one {width}x{height} picture packed for AlpSeqPut",
                per_s * 1e6,
                "us",
                "target below the device's ALP_MIN_PICTURE_TIME (read at open)",
            )
        )
    emulator = Dlpc900Emulator(1920, 1080)
    with Dlpc900Dmd(backend=Dlpc900Backend([emulator]), geometry=(1920, 1080), max_upload_s=None) as dmd:
        for name, pictures in (
            ("random", rng.random((24, 1080, 1920)) < 0.5),
            ("8x8 macropixels", np.kron(rng.random((24, 135, 240)) < 0.5, np.ones((8, 8), dtype=bool))),
        ):
            packed = np.packbits(pictures.reshape(24, -1), axis=1)
            per_s = median_time_s(functools.partial(dmd.prepare, packed), max(1, repeats // 2)) / 24
            wire_bytes = dmd.prepare(packed).wire_bytes
            results += [
                BenchResult(
                    f"DLPC900: one 1920x1080 picture ({name}) into 24-bit ERLE images",
                    per_s * 1e6,
                    "us",
                    f"target < {_DLPC900_MIN_PICTURE_US} us; the USB upload, not this, bounds the rate",
                ),
                BenchResult(
                    f"DLPC900: upload of 24 such pictures at the full-speed HID ceiling ({name})",
                    wire_bytes / FULL_SPEED_HID_BYTES_PER_S,
                    "s",
                    f"{wire_bytes:,} bytes on the bus (64 kB/s)",
                ),
            ]
    return results
