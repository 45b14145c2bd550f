"""The scattering medium's complex Gaussian transmission matrix, generated on demand from the seed.

R[j, m] couples input mode j (a cell of mirrors) to output mode m (a point of the speckle grid on the
camera). Entries come from a counter-based generator (Philox): the stream that fills the tile of 1024 input
modes x 8 x 8 output modes at absolute mode coordinates is keyed by (seed, purpose) and started at a counter
made of the tile's ids. So any sub-block can be generated on its own, and a given (j, u, v) always gets the
same value, whatever the camera ROI, the number of outputs or the order of requests (the published simulator
redraws its whole matrix when the number of outputs changes).

Each entry is drawn by Box-Muller from one 64-bit Philox word: |R|^2 = -s log(u1) is exponential and the
phase 2 pi u2 uniform, which is exactly a circular complex Gaussian with E|R|^2 = s = 1 / n_input_modes.
Using the raw words rather than numpy's ziggurat keeps the layout of the stream under our control; u1 keeps
32 bits, which truncates |R|^2 at 22 s (probability 2e-10), far beyond anything a sum over modes can see.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import numpy.typing as npt

__all__ = [
    "Transmission",
    "INPUT_BLOCK",
    "TILE_SIDE",
    "derive_key",
    "mode_grid_size",
    "interpolation_weights",
]

logger = logging.getLogger(__name__)

INPUT_BLOCK = 1024
"""Input modes per generator block."""
TILE_SIDE = 8
"""Output modes per tile side (tiles are TILE_SIDE x TILE_SIDE modes)."""

_TILE_MODES = TILE_SIDE * TILE_SIDE
_TILE_ENTRIES = INPUT_BLOCK * _TILE_MODES
_DOMAIN_TRANSMISSION = 0x5452_4E53  # "TRNS": keeps these keys apart from the sensor's streams


def derive_key(seed: int, domain: int, purpose: int = 0) -> npt.NDArray[np.uint64]:
    """Philox key (two 64-bit words) for one independent stream family of the emulator.

    SeedSequence hashes its entropy with a fixed, documented algorithm, so keys are the same on every numpy
    version and platform, and nearby seeds give unrelated keys.
    """
    state = np.random.SeedSequence([domain, purpose, seed]).generate_state(2, dtype=np.uint64)
    return np.asarray(state, dtype=np.uint64)  # already uint64 (no copy); numpy's stubs say uint32 or uint64


def mode_grid_size(n_pixels: int, grain_px: float) -> int:
    """Output modes along a sensor side of ``n_pixels``: one every ``grain_px`` pixels from pixel 0, plus one
    so that the last pixel has a right (or lower) neighbour to interpolate with."""
    return int(math.floor((n_pixels - 1) / grain_px)) + 2


def interpolation_weights(
    pixel_coords: npt.ArrayLike, grain_px: float
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Along one axis: the mode left of each absolute pixel coordinate and the normalised linear weights of
    that mode and the next.

    Pixel p sits at mode coordinate p / grain_px = i + f; its weights are (1 - f, f) divided by
    sqrt((1 - f)^2 + f^2). The 2-D bilinear weights are products of the two axes' weights, and so is their
    norm, so normalising each axis makes every pixel's field unit-variance (exponential speckle with the
    right mean) while neighbours stay correlated over about one grain.

    Returns:
        (left mode index, weight of the left mode, weight of the right mode); with grain 1 the right weight
        is exactly 0 and the pixel is exactly a mode.
    """
    position = np.asarray(pixel_coords, dtype=np.float64) / float(grain_px)
    left = np.floor(position)
    fraction = position - left
    norm = np.sqrt((1.0 - fraction) ** 2 + fraction**2)
    return left.astype(np.int64), ((1.0 - fraction) / norm).astype(np.float32), (fraction / norm).astype(np.float32)


class Transmission:
    """Counter-based complex Gaussian matrix R (n_input_modes x n_mode_cols * n_mode_rows), complex64.

    Args:
        seed: the emulator's seed.
        n_input_modes: number of input modes (cells); sets the scale E|R|^2 = 1 / n_input_modes.
        n_mode_cols, n_mode_rows: output-mode grid; flat output index m = v * n_mode_cols + u.
        purpose: 0 for the medium at time 0; 1 for the independent matrix that drift rotates towards.
    """

    def __init__(self, seed: int, n_input_modes: int, n_mode_cols: int, n_mode_rows: int, purpose: int = 0) -> None:
        if n_input_modes < 1 or n_mode_cols < 1 or n_mode_rows < 1:
            raise ValueError(
                f"transmission needs positive sizes, got {n_input_modes} inputs, {n_mode_cols}x{n_mode_rows} modes"
            )
        if purpose < 0:
            raise ValueError(f"purpose must be >= 0, got {purpose}")
        self.seed = int(seed)
        self.n_input_modes = int(n_input_modes)
        self.n_mode_cols = int(n_mode_cols)
        self.n_mode_rows = int(n_mode_rows)
        self.purpose = int(purpose)
        self._key = derive_key(self.seed, _DOMAIN_TRANSMISSION, self.purpose)
        # -log(u1) / n: the scale goes into the exponential so a single multiply makes the entry.
        self._inv_modes = np.float32(1.0 / self.n_input_modes)

    @property
    def n_output_modes(self) -> int:
        return self.n_mode_cols * self.n_mode_rows

    @property
    def n_input_blocks(self) -> int:
        return -(-self.n_input_modes // INPUT_BLOCK)

    @property
    def n_tile_cols(self) -> int:
        return -(-self.n_mode_cols // TILE_SIDE)

    @property
    def n_tile_rows(self) -> int:
        return -(-self.n_mode_rows // TILE_SIDE)

    def tile(self, input_block: int, tile_row: int, tile_col: int) -> npt.NDArray[np.complex64]:
        """All entries of one generator tile: (INPUT_BLOCK, TILE_SIDE, TILE_SIDE) = [j_local, v % 8, u % 8].

        Tiles beyond the matrix edge are still well defined (the stream does not depend on the matrix size);
        callers crop them.
        """
        counter = np.array([0, input_block, tile_row, tile_col], dtype=np.uint64)
        words = np.random.Philox(counter=counter, key=self._key).random_raw(_TILE_ENTRIES)
        high = (words >> np.uint64(32)).astype(np.float32)
        low = words.astype(np.uint32).astype(np.float32)
        # u1 in (0, 1]: the half-step offset keeps log() finite.
        power = np.log((high + np.float32(0.5)) * np.float32(2.0**-32))
        power *= -self._inv_modes
        amplitude = np.sqrt(power, out=power)
        phase = low
        phase *= np.float32(2.0 * math.pi / 2.0**32)
        out = np.empty(_TILE_ENTRIES, dtype=np.complex64)
        parts = out.view(np.float32).reshape(_TILE_ENTRIES, 2)
        np.multiply(amplitude, np.cos(phase), out=parts[:, 0])
        np.multiply(amplitude, np.sin(phase), out=parts[:, 1])
        return out.reshape(INPUT_BLOCK, TILE_SIDE, TILE_SIDE)

    def band(
        self, input_block: int, tile_row: int, tile_col_start: int, tile_col_stop: int
    ) -> npt.NDArray[np.complex64]:
        """Tiles ``tile_col_start..tile_col_stop-1`` of one tile row side by side: (1024, 8, 8 * n_tiles).

        Entry [j_local, dv, du] is R[input_block * 1024 + j_local, mode (u0 + du, tile_row * 8 + dv)] with
        u0 = tile_col_start * 8. Rows past n_input_modes and modes past the grid are included, uncropped.
        """
        n_tiles = tile_col_stop - tile_col_start
        out = np.empty((INPUT_BLOCK, TILE_SIDE, TILE_SIDE * n_tiles), dtype=np.complex64)
        for index in range(n_tiles):
            columns = slice(index * TILE_SIDE, (index + 1) * TILE_SIDE)
            out[:, :, columns] = self.tile(input_block, tile_row, tile_col_start + index)
        return out

    def block(self, input_modes: npt.ArrayLike | slice, output_modes: npt.ArrayLike) -> npt.NDArray[np.complex64]:
        """R[input_modes][:, output_modes] as complex64 (n_in, n_out); any order, duplicates allowed.

        Only the tiles that hold a requested entry are generated.

        Raises:
            IndexError: for a mode outside the matrix.
        """
        rows = self._as_indices(input_modes, self.n_input_modes, "input mode")
        cols = self._as_indices(output_modes, self.n_output_modes, "output mode")
        out = np.empty((rows.size, cols.size), dtype=np.complex64)
        if rows.size == 0 or cols.size == 0:
            return out
        col_u = cols % self.n_mode_cols
        col_v = cols // self.n_mode_cols
        col_tile = (col_v // TILE_SIDE) * self.n_tile_cols + col_u // TILE_SIDE
        col_local = (col_v % TILE_SIDE) * TILE_SIDE + col_u % TILE_SIDE
        row_block = rows // INPUT_BLOCK
        row_local = rows % INPUT_BLOCK
        for block_index in np.unique(row_block):
            out_rows = np.flatnonzero(row_block == block_index)
            for tile_index in np.unique(col_tile):
                out_cols = np.flatnonzero(col_tile == tile_index)
                tile_row, tile_col = divmod(int(tile_index), self.n_tile_cols)
                values = self.tile(int(block_index), tile_row, tile_col).reshape(INPUT_BLOCK, _TILE_MODES)
                out[np.ix_(out_rows, out_cols)] = values[np.ix_(row_local[out_rows], col_local[out_cols])]
        return out

    @staticmethod
    def _as_indices(modes: npt.ArrayLike | slice, size: int, what: str) -> npt.NDArray[np.int64]:
        if isinstance(modes, slice):
            return np.arange(size, dtype=np.int64)[modes]
        indices = np.asarray(modes)
        if indices.ndim != 1 or not (indices.size == 0 or np.issubdtype(indices.dtype, np.integer)):
            raise IndexError(f"{what}s must be a 1-D integer array or a slice, got {indices.dtype} {indices.shape}")
        indices = indices.astype(np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= size):
            raise IndexError(f"{what} out of range 0..{size - 1}")
        return indices
