"""The emulated optics: DMD frames in, noiseless speckle intensities on the camera ROI out.

Model (docs/emulator.md):
- Input modes are cells of c x c mirrors (c = ``cell_mirrors``), row-major, partial at the right and bottom
  edges. A cell's amplitude is (mirrors ON in the cell) / c^2, so a partial cell passes light in proportion
  to its area.
- Output modes sit every ``grain_px`` pixels on the sensor (absolute coordinates); a pixel's field is the
  normalised bilinear interpolation of its four neighbouring modes (see
  :func:`~firmware_sim.transmission.interpolation_weights`).
- field(pixel) = field_scale * sum_j amplitude_j * T_px[j, pixel], with T_px the transmission interpolated
  to pixels, and intensity = |field|^2. ``field_scale`` (1 when the DMD is a whole number of cells) makes
  "every mirror ON" have mean intensity exactly 1, the unit in which ``SimConfig.signal_e`` is defined.
- Drift: R(t) = R0 cos(theta) + R1 sin(theta) with cos(theta) = exp(-t / tau), R1 an independent matrix.

Speed: for feature frames the layout is folded once per (layout, ROI) into F = W @ R over the window of
output modes that the ROI's pixels interpolate from, stored as one float32 C-contiguous array
(n_features, 2 n_modes) = [Re | Im]. A batch of binary frames then costs one real sgemm (half the flops of a
complex64 product), and the pixel interpolation, being linear, is applied to the fields afterwards: two small
products per frame. At grain g there are about n_px / g^2 modes, so both F and the sgemm are g^2 times
smaller than at pixel level (T_px = R interpolated; identical with grain 1). The fold runs tile row by tile
row and feature group by feature group, so its working memory stays near ``WORK_BYTES`` besides F. Raw frames
are reduced to cell amplitudes first, so their products grow with cells, not mirrors; so are feature frames of a
layout with more features than cells whose fold would not fit in memory.

Reproducibility: every matrix product runs in blocks of a fixed number of rows (zero-padded), so a frame's
result does not depend on how a sequence was split into batches (BLAS picks different kernels, with
different rounding, for different batch sizes).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .config import SimConfig
from .ground_truth import GroundTruth
from .transmission import INPUT_BLOCK, TILE_SIDE, Transmission, interpolation_weights, mode_grid_size

__all__ = ["OpticalPath", "Roi", "CellLayout", "cell_overlaps", "FOLD_CACHE_BYTES", "RAW_CACHE_BYTES"]

logger = logging.getLogger(__name__)

FOLD_CACHE_BYTES = 2 * 2**30
_RECENT_FOLDS = 4  # layouts whose folds are kept besides the current one
"""Largest folded feature matrix (both drift matrices together) kept in memory; larger folds are streamed."""
RAW_CACHE_BYTES = 256 * 2**20
"""Largest mode-level transmission (per matrix: drift keeps two) kept for raw frames; larger ones are
regenerated per call."""
WORK_BYTES = 32 * 2**20
"""Working memory of one fold group (its band of mode fields), besides the folded matrix."""
_CHUNK_BYTES = 8 * 2**20
_RAW_CHUNK_BYTES = 64 * 2**20

FoldSink = Callable[[int, int, slice, npt.NDArray[np.float32], npt.NDArray[np.float32]], None]
"""Receives a fold's pieces: (first feature, stop feature, flat modes, real part, imaginary part)."""

# Row blocks of the fixed-shape matrix products: larger blocks amortise the packing of big matrices.
_SMALL_PRODUCT = 2**22
_LARGE_PRODUCT = 2**26
_HUGE_PRODUCT = 2**27


@dataclass(frozen=True)
class Roi:
    """Camera region of interest in absolute sensor pixels; pixels are row-major over it."""

    x: int
    y: int
    width: int
    height: int

    @property
    def n_pixels(self) -> int:
        return self.width * self.height

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.x, self.y, self.width, self.height)


@dataclass(frozen=True)
class CellLayout:
    """A layout table reduced to input modes: the sparse weights W[f, j] as (feature, cell, mirror count).

    Entries are sorted by (feature, cell) and unique; W[f, j] = mirror_counts / c^2.
    """

    n_features: int
    runs: npt.NDArray[np.int64]
    features: npt.NDArray[np.int64]
    cells: npt.NDArray[np.int64]
    mirror_counts: npt.NDArray[np.int64]


def cell_overlaps(
    runs: npt.ArrayLike, dmd_width: int, dmd_height: int, cell_mirrors: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """How many mirrors of each feature fall in each cell, from runs (feature, first_mirror, n_mirrors).

    Runs are cut into row segments and segments into cell columns arithmetically, so the cost grows with
    runs, rows and cells touched, never with mirrors.

    Returns:
        (features, cells, mirror counts), unique (feature, cell) pairs sorted by feature then cell.
    """
    table = np.asarray(runs, dtype=np.int64).reshape(-1, 3)
    n_cell_cols = -(-dmd_width // cell_mirrors)
    n_cells = n_cell_cols * -(-dmd_height // cell_mirrors)
    empty = np.zeros(0, dtype=np.int64)
    if table.shape[0] == 0:
        return empty, empty, empty
    feature, first, count = table[:, 0], table[:, 1], table[:, 2]
    stop = first + count
    row_first = first // dmd_width
    row_last = (stop - 1) // dmd_width
    n_segments = row_last - row_first + 1
    segment_run = np.repeat(np.arange(table.shape[0]), n_segments)
    segment_offset = np.arange(segment_run.size) - np.repeat(np.cumsum(n_segments) - n_segments, n_segments)
    segment_row = row_first[segment_run] + segment_offset
    row_start = segment_row * dmd_width
    col_start = np.maximum(first[segment_run], row_start) - row_start
    col_stop = np.minimum(stop[segment_run], row_start + dmd_width) - row_start

    cell_col_first = col_start // cell_mirrors
    n_pairs = (col_stop - 1) // cell_mirrors - cell_col_first + 1
    pair_segment = np.repeat(np.arange(segment_run.size), n_pairs)
    pair_offset = np.arange(pair_segment.size) - np.repeat(np.cumsum(n_pairs) - n_pairs, n_pairs)
    cell_col = cell_col_first[pair_segment] + pair_offset
    overlap = np.minimum(col_stop[pair_segment], (cell_col + 1) * cell_mirrors) - np.maximum(
        col_start[pair_segment], cell_col * cell_mirrors
    )
    cell = (segment_row[pair_segment] // cell_mirrors) * n_cell_cols + cell_col
    key = feature[segment_run[pair_segment]] * n_cells + cell
    unique_keys, inverse = np.unique(key, return_inverse=True)
    counts = np.bincount(inverse.ravel(), weights=overlap, minlength=unique_keys.size)
    return unique_keys // n_cells, unique_keys % n_cells, np.rint(counts).astype(np.int64)


class _RoiModes:
    """The ROI in output-mode space: the window of modes it needs and each pixel's interpolation."""

    def __init__(self, roi: Roi, grain_px: float) -> None:
        self.width = roi.width
        self.height = roi.height
        (self.u_start, self.n_u, self.col_left, self.col_right, self.col_w0, self.col_w1) = self._axis(
            roi.x, roi.width, grain_px
        )
        (self.v_start, self.n_v, self.row_left, self.row_right, self.row_w0, self.row_w1) = self._axis(
            roi.y, roi.height, grain_px
        )
        self.v_stop = self.v_start + self.n_v
        self.u_stop = self.u_start + self.n_u
        self.n_modes = self.n_v * self.n_u
        self.tile_col_start = self.u_start // TILE_SIDE
        self.tile_col_stop = (self.u_stop - 1) // TILE_SIDE + 1
        self.col_offset = self.u_start - self.tile_col_start * TILE_SIDE
        self._interpolation: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]] | None = None
        # With grain 1 every pixel is exactly one mode: the interpolation is the identity and is skipped.
        self.pixels_are_modes = grain_px == 1.0 and (self.n_u, self.n_v) == (self.width, self.height)

    @staticmethod
    def _axis(
        start: int, length: int, grain_px: float
    ) -> tuple[
        int, int, npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float32], npt.NDArray[np.float32]
    ]:
        left, w0, w1 = interpolation_weights(np.arange(start, start + length), grain_px)
        first = int(left[0])
        # The next mode is needed only where it has a weight (never with grain 1).
        count = int((left + (w1 > 0)).max()) + 1 - first
        local = left - first
        return first, count, local, np.minimum(local + 1, count - 1), w0, w1

    def tile_rows(self) -> list[tuple[int, int, int]]:
        """(tile row, first mode row, stop mode row) of each generator tile row that the window crosses."""
        rows = []
        for tile_row in range(self.v_start // TILE_SIDE, (self.v_stop - 1) // TILE_SIDE + 1):
            first = max(self.v_start, tile_row * TILE_SIDE)
            rows.append((tile_row, first, min(self.v_stop, (tile_row + 1) * TILE_SIDE)))
        return rows

    def crop_band(
        self, band: npt.NDArray[np.complex64], tile_row: int, v_first: int, v_stop: int
    ) -> npt.NDArray[np.complex64]:
        """The window's part (rows, v_stop - v_first, n_u) of a transmission band of this tile row."""
        top = tile_row * TILE_SIDE
        return band[:, v_first - top : v_stop - top, self.col_offset : self.col_offset + self.n_u]

    def intensity(self, mode_fields: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """(n, 2 n_modes) [Re | Im] fields at the window's modes -> (n, n_px) pixel intensities.

        Interpolation is two small matrix products per frame (columns, then rows), which numpy runs frame by
        frame with a fixed shape: several times faster than gathers, and independent of the batch size.
        """
        n_frames = mode_fields.shape[0]
        if self.pixels_are_modes:
            n_px = self.width * self.height
            out = np.square(mode_fields[:, :n_px])
            out += np.square(mode_fields[:, n_px:])
            return out
        columns_matrix, rows_matrix = self._matrices()
        out = np.empty((n_frames, self.width * self.height), dtype=np.float32)
        per_frame = 8 * (self.n_v * self.width + self.width * self.height)
        chunk = max(1, _CHUNK_BYTES // per_frame)
        for start in range(0, n_frames, chunk):
            stop = min(n_frames, start + chunk)
            modes = mode_fields[start:stop].reshape(stop - start, 2 * self.n_v, self.n_u)
            columns = np.matmul(modes, columns_matrix).reshape(stop - start, 2, self.n_v, self.width)
            pixels = np.matmul(rows_matrix, columns)
            np.square(pixels, out=pixels)
            np.add(pixels[:, 0], pixels[:, 1], out=out[start:stop].reshape(stop - start, self.height, self.width))
        return out

    def _matrices(self) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Dense interpolation matrices: columns (n_u, width) and rows (height, n_v), two weights per pixel."""
        if self._interpolation is None:
            columns = np.zeros((self.n_u, self.width), dtype=np.float32)
            pixel = np.arange(self.width)
            np.add.at(columns, (self.col_left, pixel), self.col_w0)
            np.add.at(columns, (self.col_right, pixel), self.col_w1)
            rows = np.zeros((self.height, self.n_v), dtype=np.float32)
            pixel = np.arange(self.height)
            np.add.at(rows, (pixel, self.row_left), self.row_w0)
            np.add.at(rows, (pixel, self.row_right), self.row_w1)
            self._interpolation = (columns, rows)
        return self._interpolation


def _row_block(inner: int, outer: int) -> int:
    """Rows per fixed-shape block of a (rows x inner) @ (inner x outer) product."""
    size = inner * outer
    if size < _SMALL_PRODUCT:
        return 64
    if size < _LARGE_PRODUCT:
        return 128
    if size < _HUGE_PRODUCT:
        return 256
    return 512  # BLAS runs near its peak only on tall blocks: 512 rows give ~15% more than 256 here


def _matmul_rows(rows: npt.NDArray[np.float32], matrix: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """rows @ matrix, computed in zero-padded blocks of a fixed number of rows.

    The block shape depends on the matrix only, so every frame goes through the same BLAS kernel with the
    same rounding whatever the batch it came in: results are identical bit for bit under any chunking.
    """
    n_rows, inner = rows.shape
    block = _row_block(inner, matrix.shape[1])
    n_padded = -(-n_rows // block) * block
    # Results land in place, block by block; rows are cast to float32 one block at a time (they may be 0/1
    # bytes), so no temporary as large as the whole input or output exists.
    out = np.empty((n_padded, matrix.shape[1]), dtype=np.float32)
    buffer = np.empty((block, inner), dtype=np.float32)
    for start in range(0, n_padded, block):
        part = rows[start : start + block]
        buffer[: part.shape[0]] = part
        buffer[part.shape[0] :] = 0.0
        np.matmul(buffer, matrix, out=out[start : start + block])
    return out[:n_rows]


class OpticalPath:
    """DMD -> scattering medium -> camera ROI, noiseless, in units where "all mirrors ON" has mean 1.

    The firmware sets the layout and the ROI, then asks for the intensities of batches of frames with their
    device times (microseconds). Everything is deterministic from ``config.seed``.

    Args:
        config: the emulator options.
        fold_cache_bytes: largest folded feature matrix kept in memory (larger folds are recomputed per call).
        raw_cache_bytes: largest mode-level transmission kept for raw frames.
    """

    def __init__(
        self, config: SimConfig, *, fold_cache_bytes: int = FOLD_CACHE_BYTES, raw_cache_bytes: int = RAW_CACHE_BYTES
    ) -> None:
        self.config = config
        self.fold_cache_bytes = int(fold_cache_bytes)
        self.raw_cache_bytes = int(raw_cache_bytes)
        cell = config.cell_mirrors
        self.n_cell_cols = -(-config.dmd_width // cell)
        self.n_cell_rows = -(-config.dmd_height // cell)
        self.n_input_modes = self.n_cell_cols * self.n_cell_rows
        self.n_mode_cols = mode_grid_size(config.camera_width, config.grain_px)
        self.n_mode_rows = mode_grid_size(config.camera_height, config.grain_px)
        self.drifts = math.isfinite(config.drift_tau_s)
        self.field_scale = self._all_on_field_scale()
        self._transmissions: dict[int, Transmission] = {}
        self._roi = Roi(0, 0, config.camera_width, config.camera_height)
        self._roi_modes: _RoiModes | None = None
        self._layout: CellLayout | None = None
        self._folded: dict[int, npt.NDArray[np.float32]] = {}
        self._fold_streamed = False
        self._by_cell: (
            tuple[npt.NDArray[np.int64], npt.NDArray[np.float32], npt.NDArray[np.int64], npt.NDArray[np.int64]] | None
        ) = None
        self._raw_blocks: dict[tuple[int, int, int], npt.NDArray[np.float32]] = {}
        # Folds of the last few layouts under the current ROI, by layout digest: a driver that alternates between
        # layouts (the linear mode's signal levels) finds its matrices folded already.
        self._layout_key = b""
        self._recent_folds: OrderedDict[bytes, tuple[CellLayout, dict[int, npt.NDArray[np.float32]]]] = OrderedDict()
        self._raw_cached: bool | None = None

    def _all_on_field_scale(self) -> float:
        """Scale of the field that gives mean intensity 1 with every mirror ON, partial edge cells included."""
        cell, config = self.config.cell_mirrors, self.config
        last_col = config.dmd_width - (self.n_cell_cols - 1) * cell
        last_row = config.dmd_height - (self.n_cell_rows - 1) * cell
        col_power = ((self.n_cell_cols - 1) * cell**2 + last_col**2) / cell**2
        row_power = ((self.n_cell_rows - 1) * cell**2 + last_row**2) / cell**2
        # sum_j amplitude_j^2 over the cell grid, against n_input_modes for whole cells.
        return math.sqrt(self.n_input_modes / (col_power * row_power))

    # ------------------------------------------------------------------------------------------ state
    @property
    def roi(self) -> Roi:
        return self._roi

    @property
    def n_pixels(self) -> int:
        return self._roi.n_pixels

    @property
    def layout(self) -> CellLayout | None:
        return self._layout

    @property
    def n_features(self) -> int:
        return 0 if self._layout is None else self._layout.n_features

    def transmission(self, purpose: int = 0) -> Transmission:
        """The medium's matrix (purpose 0) or the drift target (purpose 1)."""
        if purpose not in self._transmissions:
            self._transmissions[purpose] = Transmission(
                self.config.seed, self.n_input_modes, self.n_mode_cols, self.n_mode_rows, purpose
            )
        return self._transmissions[purpose]

    def set_layout(self, n_features: int, runs: npt.ArrayLike) -> None:
        """Load a layout table: (M, 3) runs (feature, first_mirror, n_mirrors), validated by the firmware."""
        table = np.asarray(runs)
        if table.ndim != 2 or table.shape[1] != 3:
            raise ValueError(f"runs must have shape (M, 3), got {table.shape}")
        table = table.astype(np.int64)
        n_mirrors = self.config.dmd_width * self.config.dmd_height
        if n_features < 1 or (
            table.size
            and (
                table[:, 0].max() >= n_features
                or table[:, 1:].min() < 0
                or table[:, 2].min() < 1
                or (table[:, 1] + table[:, 2]).max() > n_mirrors
            )
        ):
            raise ValueError("layout runs out of range (the firmware validates layouts before loading them)")
        key = hashlib.sha256(np.int64(n_features).tobytes() + table.tobytes()).digest()
        self._keep_fold()
        recent = self._recent_folds.pop(key, None)
        if recent is not None:
            self._layout, self._folded = recent[0], recent[1]
        else:
            features, cells, counts = cell_overlaps(
                table, self.config.dmd_width, self.config.dmd_height, self.config.cell_mirrors
            )
            self._layout = CellLayout(int(n_features), table, features, cells, counts)
            self._folded = {}
        self._layout_key = key
        self._fold_streamed = False
        self._by_cell = None
        logger.debug("layout: %d features, %d runs, folded before: %s", n_features, len(table), recent is not None)

    def _keep_fold(self) -> None:
        """Keep the current layout's folded matrices among the recent ones (at most ``_RECENT_FOLDS`` layouts and
        half the fold budget, oldest dropped first)."""
        if self._layout is None or not self._folded:
            return
        self._recent_folds[self._layout_key] = (self._layout, self._folded)
        while len(self._recent_folds) > _RECENT_FOLDS or (
            sum(m.nbytes for _, folded in self._recent_folds.values() for m in folded.values())
            > self.fold_cache_bytes // 2
        ):
            self._recent_folds.popitem(last=False)

    def clear_layout(self) -> None:
        """Forget the layout table (feature frames are refused until the next one)."""
        self._layout = None
        self._folded = {}
        self._recent_folds.clear()
        self._fold_streamed = False
        self._by_cell = None

    def set_roi(self, x: int, y: int, w: int, h: int) -> None:
        """Select the camera region (absolute pixels); pixels are row-major over it."""
        config = self.config
        if w < 1 or h < 1 or x < 0 or y < 0 or x + w > config.camera_width or y + h > config.camera_height:
            raise ValueError(
                f"ROI ({x}, {y}, {w}, {h}) not inside the {config.camera_width}x{config.camera_height} sensor"
            )
        roi = Roi(int(x), int(y), int(w), int(h))
        if roi == self._roi:
            return
        self._roi = roi
        self._roi_modes = None
        self._folded = {}
        self._recent_folds.clear()  # folded for the old ROI
        self._fold_streamed = False
        self._raw_blocks.clear()
        self._raw_cached = None

    @property
    def ground_truth(self) -> GroundTruth:
        """The reference model of these optics (current layout and ROI), for in-process tests."""
        return GroundTruth(self)

    # ------------------------------------------------------------------------------------ intensities
    def intensity_blank(self, n: int) -> npt.NDArray[np.float32]:
        """Intensities of n frames with every mirror OFF: zeros."""
        return np.zeros((int(n), self.n_pixels), dtype=np.float32)

    def intensity_features(self, bits: npt.ArrayLike, times_us: npt.ArrayLike | None) -> npt.NDArray[np.float32]:
        """Noiseless intensities (n, n_px) of feature frames ``bits`` (n, n_features) of 0/1 at device times."""
        layout = self._require_layout()
        frames = np.asarray(bits)
        if frames.ndim != 2 or frames.shape[1] != layout.n_features:
            raise ValueError(f"feature frames must have shape (n, {layout.n_features}), got {frames.shape}")
        mix = self._drift_mix(times_us, frames.shape[0])
        fields = self._feature_fields(frames, 0)
        if mix is not None:
            fields *= mix[0][:, None]
            drifted = self._feature_fields(frames, 1)
            drifted *= mix[1][:, None]
            fields += drifted
        return self._modes().intensity(fields)

    def intensity_raw(self, packed: npt.ArrayLike, times_us: npt.ArrayLike | None) -> npt.NDArray[np.float32]:
        """Noiseless intensities (n, n_px) of raw packed mirror frames (n, ceil(W H / 8)), MSB first."""
        frames = np.asarray(packed)
        n_bytes = -(-self.config.dmd_width * self.config.dmd_height // 8)
        if frames.ndim != 2 or frames.shape[1] != n_bytes or frames.dtype != np.uint8:
            raise ValueError(f"raw frames must be uint8 of shape (n, {n_bytes}), got {frames.dtype} {frames.shape}")
        n_frames = frames.shape[0]
        mix = self._drift_mix(times_us, n_frames)
        grid = self._modes()
        out = np.empty((n_frames, self.n_pixels), dtype=np.float32)
        per_frame = self.config.dmd_width * self.config.dmd_height + 4 * (self.n_input_modes + 4 * grid.n_modes)
        chunk = max(1, _RAW_CHUNK_BYTES // per_frame)
        for start in range(0, n_frames, chunk):
            stop = min(n_frames, start + chunk)
            amplitudes = self.cell_amplitudes(frames[start:stop])
            fields = self._raw_fields(amplitudes, 0)
            if mix is not None:
                fields *= mix[0][start:stop, None]
                drifted = self._raw_fields(amplitudes, 1)
                drifted *= mix[1][start:stop, None]
                fields += drifted
            out[start:stop] = grid.intensity(fields)
        return out

    def cell_amplitudes(self, packed: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        """Fraction of each cell's c^2 mirror area that is ON, (n, n_cells), from packed raw frames."""
        config = self.config
        cell = config.cell_mirrors
        n_frames = packed.shape[0]
        bits = np.unpackbits(packed, axis=1, count=config.dmd_width * config.dmd_height)
        bits = bits.reshape(n_frames, config.dmd_height, config.dmd_width)
        # Sum the c mirror rows of each cell row with whole-row (SIMD) adds, then the c columns of each cell on
        # the c-times smaller result: several times faster than reduceat over short segments.
        row_sums = np.zeros(
            (n_frames, self.n_cell_rows, config.dmd_width), dtype=np.uint8 if cell <= 255 else np.uint32
        )
        for offset in range(min(cell, config.dmd_height)):
            part = bits[:, offset::cell, :]
            row_sums[:, : part.shape[1], :] += part
        cell_sums = np.zeros(
            (n_frames, self.n_cell_rows, self.n_cell_cols), dtype=np.uint16 if cell <= 255 else np.uint32
        )
        for offset in range(min(cell, config.dmd_width)):
            part = row_sums[:, :, offset::cell]
            cell_sums[:, :, : part.shape[2]] += part
        amplitudes = cell_sums.reshape(n_frames, self.n_input_modes).astype(np.float32)
        amplitudes /= np.float32(cell * cell)
        return amplitudes

    # -------------------------------------------------------------------------------------- internals
    def _require_layout(self) -> CellLayout:
        if self._layout is None:
            raise RuntimeError("no layout loaded: feature frames need a layout table")
        return self._layout

    def _modes(self) -> _RoiModes:
        if self._roi_modes is None:
            self._roi_modes = _RoiModes(self._roi, self.config.grain_px)
        return self._roi_modes

    def _drift_mix(
        self, times_us: npt.ArrayLike | None, n_frames: int
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]] | None:
        """Per-frame (cos theta, sin theta) of the drift, or None without drift."""
        if not self.drifts:
            return None
        times = np.zeros(n_frames) if times_us is None else np.asarray(times_us, dtype=np.float64).reshape(-1)
        if times.shape != (n_frames,):
            raise ValueError(f"times_us must have one entry per frame ({n_frames}), got {times.shape}")
        if not np.all(times >= 0):
            raise ValueError("device times must be >= 0")
        cos = np.exp(-times * 1e-6 / self.config.drift_tau_s)
        sin = np.sqrt(np.maximum(0.0, 1.0 - cos * cos))
        return cos.astype(np.float32), sin.astype(np.float32)

    # ---- feature frames: fold the layout into F = W @ R over the ROI's mode window
    def _feature_fields(self, frames: npt.NDArray[np.float32], purpose: int) -> npt.NDArray[np.float32]:
        """Mode-level fields (n, 2 n_modes) [Re | Im] of feature frames."""
        folded = self._folded_matrix(purpose)
        if folded is not None:
            return _matmul_rows(frames, folded)
        if self._require_layout().n_features > self.n_input_modes:
            # More features than input modes (a layout over most of the DMD): through the cells, the products
            # grow with cells instead of refolding every feature for every batch.
            return self._raw_fields(self._feature_amplitudes(frames), purpose)
        grid = self._modes()
        fields = np.zeros((frames.shape[0], 2 * grid.n_modes), dtype=np.float32)

        def accumulate(
            first: int, stop: int, modes: slice, real: npt.NDArray[np.float32], imag: npt.NDArray[np.float32]
        ) -> None:
            rows = np.ascontiguousarray(frames[:, first:stop])
            part = _matmul_rows(rows, np.concatenate((real, imag), axis=1))
            width = real.shape[1]
            fields[:, modes] += part[:, :width]
            fields[:, grid.n_modes + modes.start : grid.n_modes + modes.stop] += part[:, width:]

        self._fold(purpose, accumulate)
        return fields

    def _feature_amplitudes(self, frames: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Cell amplitudes (n, n_cells) of feature frames: the mirrors ON in each cell through the layout / c^2."""
        layout = self._require_layout()
        if self._by_cell is None:
            order = np.argsort(layout.cells, kind="stable")
            cells = layout.cells[order]
            first = np.flatnonzero(np.r_[True, cells[1:] != cells[:-1]]) if cells.size else cells
            weights = (layout.mirror_counts[order] / self.config.cell_mirrors**2).astype(np.float32)
            self._by_cell = (layout.features[order], weights, cells[first], first)
        features, weights, cells_hit, first = self._by_cell
        amplitudes = np.zeros((frames.shape[0], self.n_input_modes), dtype=np.float32)
        if features.size == 0:
            return amplitudes
        chunk = max(1, _RAW_CHUNK_BYTES // (4 * features.size))
        for start in range(0, frames.shape[0], chunk):
            stop = min(frames.shape[0], start + chunk)
            lit = frames[start:stop][:, features] * weights
            amplitudes[start:stop, cells_hit] = np.add.reduceat(lit, first, axis=1)
        return amplitudes

    def _folded_matrix(self, purpose: int) -> npt.NDArray[np.float32] | None:
        """F (n_features, 2 n_modes) [Re | Im] for the current layout and ROI, or None when it is too big."""
        if purpose in self._folded:
            return self._folded[purpose]
        if self._fold_streamed:
            return None
        layout = self._require_layout()
        grid = self._modes()
        matrices = 2 if self.drifts else 1
        if layout.n_features * 2 * grid.n_modes * 4 * matrices > self.fold_cache_bytes:
            through_cells = layout.n_features > self.n_input_modes
            (logger.debug if through_cells else logger.warning)(
                "folded matrix for %d features x %d output modes exceeds %d bytes: feature frames %s",
                layout.n_features,
                grid.n_modes,
                self.fold_cache_bytes,
                "go through the input cells" if through_cells else "refold for every batch (choose a smaller ROI)",
            )
            self._fold_streamed = True
            return None
        folded = np.empty((layout.n_features, 2 * grid.n_modes), dtype=np.float32)

        def store(
            first: int, stop: int, modes: slice, real: npt.NDArray[np.float32], imag: npt.NDArray[np.float32]
        ) -> None:
            folded[first:stop, modes] = real
            folded[first:stop, grid.n_modes + modes.start : grid.n_modes + modes.stop] = imag

        self._fold(purpose, store)
        self._folded[purpose] = folded
        logger.debug("folded %d features x %d output modes (purpose %d)", layout.n_features, grid.n_modes, purpose)
        return folded

    def _fold(self, purpose: int, sink: FoldSink) -> None:
        """Compute W @ R over the ROI's mode window, one tile row and one group of features at a time.

        Calls ``sink(first_feature, stop_feature, modes, real, imag)`` with (n_group, n) float32 arrays for
        the window's flat modes ``modes`` (a slice of v_local * n_u + u_local). The transmission is generated
        tile by tile, only for the input blocks that the group's features touch, and folded by a sparse
        gather-and-sum.
        """
        layout = self._require_layout()
        grid = self._modes()
        transmission = self.transmission(purpose)
        weights = (layout.mirror_counts * (self.field_scale / self.config.cell_mirrors**2)).astype(np.float32)
        group = max(1, WORK_BYTES // (TILE_SIDE * grid.n_u * 8 * 2))
        for first in range(0, layout.n_features, group):
            stop = min(layout.n_features, first + group)
            lo, hi = np.searchsorted(layout.features, [first, stop])
            features = layout.features[lo:hi] - first
            cells = layout.cells[lo:hi]
            blocks = cells // INPUT_BLOCK
            order = np.lexsort((features, blocks))
            features, cells, blocks, group_weights = features[order], cells[order], blocks[order], weights[lo:hi][order]
            block_ids, block_starts = np.unique(blocks, return_index=True)
            block_stops = np.append(block_starts[1:], blocks.size)
            for tile_row, v_first, v_stop in grid.tile_rows():
                modes = np.zeros((stop - first, v_stop - v_first, grid.n_u), dtype=np.complex64)
                for block, s, e in zip(block_ids, block_starts, block_stops, strict=True):
                    band = transmission.band(int(block), tile_row, grid.tile_col_start, grid.tile_col_stop)
                    band = grid.crop_band(band, tile_row, v_first, v_stop)
                    _gather_sum(modes, band, cells[s:e] - int(block) * INPUT_BLOCK, features[s:e], group_weights[s:e])
                flat = modes.reshape(stop - first, -1)
                window = slice((v_first - grid.v_start) * grid.n_u, (v_stop - grid.v_start) * grid.n_u)
                sink(first, stop, window, flat.real, flat.imag)

    # ---- raw frames: cell amplitudes @ mode-level transmission
    def _raw_fields(self, amplitudes: npt.NDArray[np.float32], purpose: int) -> npt.NDArray[np.float32]:
        """Mode-level fields (n, 2 n_modes) [Re | Im] of cell amplitudes (n, n_cells)."""
        grid = self._modes()
        n_frames = amplitudes.shape[0]
        fields = np.zeros((n_frames, 2 * grid.n_modes), dtype=np.float32)
        n_blocks = -(-self.n_input_modes // INPUT_BLOCK)
        block_inputs: list[npt.NDArray[np.float32] | None] = []
        for block in range(n_blocks):
            rows = np.ascontiguousarray(amplitudes[:, block * INPUT_BLOCK : (block + 1) * INPUT_BLOCK])
            # An all-dark block adds exact zeros: skipping it changes no bit and spares its generation.
            block_inputs.append(rows if rows.any() else None)
        for tile_row, v_first, v_stop in grid.tile_rows():
            total: npt.NDArray[np.float32] | None = None
            for block, block_rows in enumerate(block_inputs):
                if block_rows is None:
                    continue
                part = _matmul_rows(block_rows, self._raw_block(purpose, tile_row, v_first, v_stop, block))
                if total is None:
                    total = part
                else:
                    total += part
            if total is not None:
                first = (v_first - grid.v_start) * grid.n_u
                width = (v_stop - v_first) * grid.n_u
                fields[:, first : first + width] = total[:, :width]
                fields[:, grid.n_modes + first : grid.n_modes + first + width] = total[:, width:]
        return fields

    def _raw_block(self, purpose: int, tile_row: int, v_first: int, v_stop: int, block: int) -> npt.NDArray[np.float32]:
        """Mode-level transmission of one input block and tile row over the ROI window: [Re | Im] float32."""
        key = (purpose, tile_row, block)
        cached = self._raw_blocks.get(key)
        if cached is not None:
            return cached
        grid = self._modes()
        if self._raw_cached is None:
            size = self.n_input_modes * grid.n_modes * 8
            self._raw_cached = size <= self.raw_cache_bytes
            if not self._raw_cached:
                logger.warning(
                    "transmission for raw frames over this ROI needs %d bytes (> %d): regenerated per batch",
                    size,
                    self.raw_cache_bytes,
                )
        n_rows = min(INPUT_BLOCK, self.n_input_modes - block * INPUT_BLOCK)
        band = self.transmission(purpose).band(block, tile_row, grid.tile_col_start, grid.tile_col_stop)
        band = grid.crop_band(band, tile_row, v_first, v_stop)[:n_rows].reshape(n_rows, -1)
        band = band * np.float32(self.field_scale)
        matrix = np.concatenate((band.real, band.imag), axis=1).astype(np.float32)
        if self._raw_cached:
            self._raw_blocks[key] = matrix
        return matrix


def _gather_sum(
    modes: npt.NDArray[np.complex64],
    band: npt.NDArray[np.complex64],
    cells: npt.NDArray[np.int64],
    features: npt.NDArray[np.int64],
    weights: npt.NDArray[np.float32],
) -> None:
    """modes[f] += sum over entries of weight * band[cell], entries sorted by feature (sparse W @ R)."""
    per_entry = band.shape[1] * band.shape[2] * 8
    chunk = max(1, _CHUNK_BYTES // max(1, per_entry))
    for start in range(0, features.size, chunk):
        feature = features[start : start + chunk]
        values = band[cells[start : start + chunk]]
        values *= weights[start : start + chunk, None, None]
        heads = np.flatnonzero(np.r_[True, feature[1:] != feature[:-1]])
        modes[feature[heads]] += np.add.reduceat(values, heads, axis=0)
