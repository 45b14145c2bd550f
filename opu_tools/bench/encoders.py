"""Host-side data path: DMD frames from features, camera frames to vectors, separated bit planes."""

from __future__ import annotations

import functools

import numpy as np

from opu_driver import native
from opu_driver.encoding import BitPlaneEncoder
from opu_driver.encoding.layouts import make_layout
from opu_driver.native import fallback
from opu_driver.protocol import PixelFormat, decode_pixels, encode_pixels, output_dtype

from .timing import BenchResult, median_time_s, peak_bytes

__all__ = ["bench_encoders", "bench_frame_codec"]


def _plain_bit_planes(X: np.ndarray, n_bits: int) -> np.ndarray:
    """The same separated bit planes written the plain numpy way (whole-array float64/int64 temporaries)."""
    x = X.astype(np.float64)
    scale = np.abs(x).max() or 1.0
    q = np.rint(np.abs(x) / scale * (2**n_bits - 1)).astype(np.int64)
    positive = x > 0
    planes = np.empty((n_bits, 2, *X.shape), dtype=np.uint8)
    for b in range(n_bits):
        bit = ((q >> b) & 1).astype(np.uint8)
        planes[b, 0] = bit * positive
        planes[b, 1] = bit * ~positive
    return planes


def bench_encoders(quick: bool, repeats: int) -> list[BenchResult]:
    """Separated bit planes, 6 bits, uint8 input: the encoder vs a plain numpy version, same run."""
    results = []
    sizes = [(1000, 10_000)] if quick else [(1000, 10_000), (1000, 100_000)]
    rng = np.random.default_rng(5)
    for rows, cols in sizes:
        X = rng.integers(0, 256, size=(rows, cols), dtype=np.uint8)
        encoder = BitPlaneEncoder(6).fit(X)
        out = np.empty((6, 2, rows, cols), dtype=np.uint8)
        encoder.transform(X, out=out)  # the output pages exist before timing: both sides then write into memory
        encode = functools.partial(encoder.transform, X, out=out)
        plain = functools.partial(_plain_bit_planes, X, 6)
        ours_s = median_time_s(encode, repeats)
        ours_peak = peak_bytes(encode)
        plain_s = median_time_s(plain, max(1, repeats // 2))
        plain_peak = peak_bytes(plain) - out.nbytes  # its output is not transient
        size = f"uint8 {rows}x{cols}"
        results += [
            BenchResult(
                f"bit planes (6 bits), encoder, {size}",
                ours_s,
                "s",
                "published encoder: " + ("0.225 s" if cols == 10_000 else "3.05 s, ~3 GB transient"),
            ),
            BenchResult(f"bit planes (6 bits), plain numpy, {size}", plain_s, "s"),
            BenchResult(f"speed-up of the encoder over plain numpy, {size}", plain_s / ours_s, "x", "target >= 5"),
            BenchResult(
                f"transient memory, encoder / plain numpy, {size}",
                ours_peak / max(plain_peak, 1),
                "x",
                f"encoder {ours_peak / 2**20:.1f} MiB; target <= 0.1",
            ),
        ]
    return results


def bench_frame_codec(quick: bool, repeats: int) -> list[BenchResult]:
    """Per-frame host cost: features -> a full packed reference DMD frame, and a camera frame -> its output row."""
    results = []
    rng = np.random.default_rng(8)
    n_frames = 16 if quick else 64
    for kind in ("lined", "macro"):
        for n_features in (1000, 10_000):
            layout = make_layout(kind, n_features, 1140, 912)
            table = layout.run_table
            bits = rng.integers(0, 2, size=(n_frames, n_features), dtype=np.uint8)
            native_s = (
                median_time_s(functools.partial(native.encode_frames, bits, table, 1140 * 912), repeats) / n_frames
            )
            numpy_s = (
                median_time_s(functools.partial(fallback.encode_frames, bits, table, 1140 * 912), repeats) / n_frames
            )
            results.append(
                BenchResult(
                    f"encode a 1140x912 DMD frame, {kind} layout, {n_features} features, {native.backend()} path",
                    native_s * 1e6,
                    "us/frame",
                    f"numpy fallback {numpy_s * 1e6:,.0f} us; target < 50 us (frame time 500 us)",
                )
            )
    # The camera side as the driver runs it: each CAMERA_FRAME payload decoded by protocol.decode_pixels into the
    # request's output row (4,096 outputs: a 64x64 region).
    n_pixels = 4096
    out = np.empty((n_frames, n_pixels), dtype=np.uint16)
    for fmt in (PixelFormat.MONO8, PixelFormat.MONO12P):
        payload = encode_pixels(fmt, rng.integers(0, 256 if fmt == PixelFormat.MONO8 else 4096, size=n_pixels))
        rows = out.astype(output_dtype(fmt), copy=False)

        def decode_all(payload: bytes = payload, fmt: PixelFormat = fmt, rows: np.ndarray = rows) -> None:
            for row in rows:
                row[:] = decode_pixels(fmt, payload, n_pixels)

        seconds = median_time_s(decode_all, repeats) / n_frames
        results.append(
            BenchResult(
                f"decode a {n_pixels}-pixel {fmt.name} camera frame into its output row (the driver's path)",
                seconds * 1e6,
                "us/frame",
                "target < 50 us (frame time 500 us)",
            )
        )
    return results
