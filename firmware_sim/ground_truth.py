"""What the emulated device really is, for tests in the same process; never sent over the wire.

The ground truth recomputes the optics by the plainest route (every mirror of the layout expanded, every
pixel's four modes fetched from the transmission by index, dense products), independently of the optical
path's folded, blocked fast path, so tests can check one against the other. It is meant for small geometries.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np
import numpy.typing as npt

from .config import SimConfig
from .sensor import NoiseParameters, dark_maps, dn_per_electron, signal_scale_e
from .transmission import INPUT_BLOCK, Transmission, interpolation_weights

__all__ = ["GroundTruth", "OpticsState"]


class _RoiState(Protocol):
    def as_tuple(self) -> tuple[int, int, int, int]: ...


class _LayoutState(Protocol):
    @property
    def n_features(self) -> int: ...

    @property
    def runs(self) -> npt.NDArray[np.int64]: ...


class OpticsState(Protocol):
    """What the ground truth reads from the optics it describes (``firmware_sim.optics.OpticalPath``).

    A protocol rather than an import: the optics module builds its ground truth, so this module must not
    import it back.
    """

    @property
    def config(self) -> SimConfig: ...

    @property
    def n_input_modes(self) -> int: ...

    @property
    def n_cell_rows(self) -> int: ...

    @property
    def n_cell_cols(self) -> int: ...

    @property
    def n_mode_rows(self) -> int: ...

    @property
    def n_mode_cols(self) -> int: ...

    @property
    def field_scale(self) -> float: ...

    @property
    def n_pixels(self) -> int: ...

    @property
    def roi(self) -> _RoiState: ...

    @property
    def layout(self) -> _LayoutState | None: ...

    def transmission(self, purpose: int = 0) -> Transmission: ...


class GroundTruth:
    """The emulator's hidden parameters and reference computations.

    Attributes:
        config: the emulator options.
        n_input_modes: number of cells (input modes).
        cell_grid_shape: (rows, columns) of cells.
        mode_grid_shape: (rows, columns) of output modes over the whole sensor.
        field_scale: factor on every field so that "all mirrors ON" has mean intensity 1.
        grain_px, cell_mirrors, lag_frames, drift_tau_s: as configured.
        noise: the camera's noise parameters.

    Layout and ROI are read from the optics when a method is called (the current ones).
    """

    def __init__(self, optics: OpticsState) -> None:
        self._optics = optics
        config = optics.config
        self.config: SimConfig = config
        self.n_input_modes: int = optics.n_input_modes
        self.cell_grid_shape: tuple[int, int] = (optics.n_cell_rows, optics.n_cell_cols)
        self.mode_grid_shape: tuple[int, int] = (optics.n_mode_rows, optics.n_mode_cols)
        self.field_scale: float = optics.field_scale
        self.grain_px: float = config.grain_px
        self.cell_mirrors: int = config.cell_mirrors
        self.lag_frames: int = config.lag_frames
        self.drift_tau_s: float = config.drift_tau_s
        self.noise: NoiseParameters = NoiseParameters.from_config(config)

    def __repr__(self) -> str:
        return (
            f"GroundTruth(seed={self.config.seed}, cells={self.cell_grid_shape}, modes={self.mode_grid_shape}, "
            f"grain_px={self.grain_px}, lag_frames={self.lag_frames})"
        )

    # ----------------------------------------------------------------------------------------- camera
    @property
    def dark_pattern_e(self) -> npt.NDArray[np.float32]:
        """Dark offset + fixed pattern per sensor pixel (camera_height, camera_width), electrons, without
        dark current; zeros with noise off."""
        return dark_maps(self.config)[0]

    @property
    def hot_pixels(self) -> npt.NDArray[np.bool_]:
        """Hot-pixel mask (camera_height, camera_width); all False with noise off."""
        return dark_maps(self.config)[1]

    def signal_e_per_intensity(self, exposure_us: float, laser_power_mw: float) -> float:
        """Mean photo-electrons per unit intensity at these settings (before jitter)."""
        return signal_scale_e(self.config, exposure_us, laser_power_mw)

    def dn_per_electron(self, gain: float, bits: int) -> float:
        return dn_per_electron(self.config, gain, bits)

    # ----------------------------------------------------------------------------------------- optics
    @property
    def roi(self) -> tuple[int, int, int, int]:
        return self._optics.roi.as_tuple()

    def drift_mix(self, time_us: float) -> tuple[float, float]:
        """(cos theta, sin theta) of R(t) = R0 cos theta + R1 sin theta at device time ``time_us``."""
        if not math.isfinite(self.drift_tau_s):
            return 1.0, 0.0
        cos = math.exp(-time_us * 1e-6 / self.drift_tau_s)
        return cos, math.sqrt(max(0.0, 1.0 - cos * cos))

    def transmission(
        self,
        input_modes: npt.ArrayLike | slice | None = None,
        pixels_xy: npt.ArrayLike | None = None,
        *,
        roi: tuple[int, int, int, int] | None = None,
        time_us: float = 0.0,
    ) -> npt.NDArray[np.complex64]:
        """Pixel-level transmission T_px (n_in, n_px), field_scale included: field = amplitudes @ T_px.

        Args:
            input_modes: cell indices or a slice; all cells when None.
            pixels_xy: (n, 2) absolute (x, y) pixel coordinates; else the pixels of ``roi`` row-major; else
                those of the current ROI.
            time_us: device time (drift); 0 is the medium at rest.
        """
        if pixels_xy is not None:
            xy = np.asarray(pixels_xy, dtype=np.int64).reshape(-1, 2)
            xs, ys = xy[:, 0], xy[:, 1]
        else:
            x, y, w, h = roi if roi is not None else self.roi
            ys, xs = np.divmod(np.arange(w * h, dtype=np.int64), w)
            xs, ys = xs + x, ys + y
        inside = (xs >= 0) & (ys >= 0) & (xs < self.config.camera_width) & (ys < self.config.camera_height)
        if not inside.all():
            raise IndexError("pixel outside the sensor")
        modes = slice(None) if input_modes is None else input_modes
        cos, sin = self.drift_mix(time_us)
        result = self._pixel_matrix(0, modes, xs, ys) * np.float32(cos)
        if sin > 0:
            result += self._pixel_matrix(1, modes, xs, ys) * np.float32(sin)
        return result

    def _pixel_matrix(
        self, purpose: int, input_modes: npt.ArrayLike | slice, xs: npt.NDArray[np.int64], ys: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.complex64]:
        left, wx0, wx1 = interpolation_weights(xs, self.grain_px)
        top, wy0, wy1 = interpolation_weights(ys, self.grain_px)
        n_cols = self.mode_grid_shape[1]
        corners = [
            (top * n_cols + left, wy0 * wx0),
            (top * n_cols + left + 1, wy0 * wx1),
            ((top + 1) * n_cols + left, wy1 * wx0),
            ((top + 1) * n_cols + left + 1, wy1 * wx1),
        ]
        needed, inverse = np.unique(np.concatenate([index for index, _ in corners]), return_inverse=True)
        values = self._optics.transmission(purpose).block(input_modes, needed)
        inverse = inverse.reshape(4, -1)
        out = np.zeros((values.shape[0], xs.size), dtype=np.complex64)
        for corner, (_, weight) in enumerate(corners):
            out += values[:, inverse[corner]] * weight
        out *= np.float32(self.field_scale)
        return out

    def feature_weights(self, runs: npt.ArrayLike | None = None) -> npt.NDArray[np.float32]:
        """Dense W (n_features, n_cells): area fraction of each cell driven by each feature, from the runs
        (feature, first mirror, n_mirrors) expanded mirror by mirror: those given, else the loaded layout's."""
        if runs is None:
            layout = self._optics.layout
            if layout is None:
                raise RuntimeError("no layout loaded")
            runs, n_features = layout.runs, layout.n_features
        else:
            runs = np.asarray(runs, dtype=np.int64).reshape(-1, 3)
            n_features = int(runs[:, 0].max()) + 1 if runs.size else 0
        config = self.config
        lengths = runs[:, 2]
        starts = np.repeat(runs[:, 1] - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
        mirrors = starts + np.arange(int(lengths.sum()), dtype=np.int64)
        features = np.repeat(runs[:, 0], lengths)
        rows, cols = np.divmod(mirrors, config.dmd_width)
        cells = (rows // config.cell_mirrors) * self.cell_grid_shape[1] + cols // config.cell_mirrors
        weights = np.zeros((n_features, self.n_input_modes), dtype=np.float64)
        np.add.at(weights, (features, cells), 1.0 / config.cell_mirrors**2)
        return weights.astype(np.float32)

    def feature_matrix(self, time_us: float = 0.0, runs: npt.ArrayLike | None = None) -> npt.NDArray[np.complex64]:
        """Complex field of each feature on the current ROI (n_features, n_px): W @ T_px, for the runs given (a
        layout's ``runs``) or else the loaded layout."""
        weights = self.feature_weights(runs)
        out = np.zeros((weights.shape[0], self._optics.n_pixels), dtype=np.complex64)
        for start in range(0, self.n_input_modes, INPUT_BLOCK):
            block = slice(start, min(self.n_input_modes, start + INPUT_BLOCK))
            part = weights[:, block]
            if part.any():
                out += part.astype(np.complex64) @ self.transmission(block, time_us=time_us)
        return out

    def expected_intensity_features(self, bits: npt.ArrayLike, time_us: float = 0.0) -> npt.NDArray[np.float32]:
        """Noiseless intensities |bits @ feature_matrix|^2 (n, n_px) of feature frames at one device time."""
        frames = np.asarray(bits).astype(np.complex64)
        fields = frames @ self.feature_matrix(time_us)
        return (fields.real**2 + fields.imag**2).astype(np.float32)

    def cell_amplitudes(self, mirrors: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Cell amplitudes (n, n_cells) of unpacked mirror frames (n, H, W) or (n, H W) of 0/1."""
        config = self.config
        frames = np.asarray(mirrors, dtype=np.float64).reshape(-1, config.dmd_height, config.dmd_width)
        rows, cols = np.divmod(np.arange(config.dmd_height * config.dmd_width), config.dmd_width)
        cells = (rows // config.cell_mirrors) * self.cell_grid_shape[1] + cols // config.cell_mirrors
        out = np.zeros((frames.shape[0], self.n_input_modes))
        for index, frame in enumerate(frames):
            out[index] = np.bincount(cells, weights=frame.ravel(), minlength=self.n_input_modes)
        return (out / config.cell_mirrors**2).astype(np.float32)
