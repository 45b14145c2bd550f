"""The emulated camera sensor: noiseless intensities -> photo-electrons -> noisy ADC counts.

electrons = intensity * signal_e * (exposure_us / 400) * (laser_power_mw / 50) * (1 + jitter * N(0, 1))
            + dark offset and fixed pattern[pixel] + dark current * exposure + hot pixel excess
with Poisson shot noise on the whole mean, Gaussian read noise, then
DN = round(electrons * gain * (2**bits - 1) / full_well_e) clipped to [0, 2**bits - 1].

Shot noise: pixels whose mean is below ``POISSON_EXACT_BELOW_E`` (30 e-) get exact Poisson draws; above it the
Gaussian approximation mean + sqrt(mean) N(0, 1) is used (its skewness 1/sqrt(mean) < 0.18 there, far below
what the ADC quantisation and read noise let anyone see) because it is several times cheaper in float32.

Reproducibility: the dark pattern and hot pixels are fixed per (seed, absolute pixel), drawn once for the
whole sensor. The noise of camera frame number k comes from its own Philox stream keyed by (seed, k), drawn
in a fixed order (the jitter normal and one normal per ROI pixel, then the Poisson pixels), so the same seed
gives the same bytes whatever the batching of a sequence. Normals are made by float32 Box-Muller from raw
64-bit Philox words (two per word): about twice as fast here as numpy's ziggurat, and the stream layout does
not depend on the numpy version.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .config import SimConfig
from .transmission import derive_key

__all__ = [
    "Sensor",
    "NoiseParameters",
    "dark_maps",
    "signal_scale_e",
    "dn_per_electron",
    "POISSON_EXACT_BELOW_E",
    "REFERENCE_EXPOSURE_US",
    "REFERENCE_POWER_MW",
]

logger = logging.getLogger(__name__)

POISSON_EXACT_BELOW_E = 30.0
"""Mean electrons below which shot noise is drawn exactly from a Poisson law."""
REFERENCE_EXPOSURE_US = 400.0
"""Exposure at which ``signal_e`` and ``hot_pixel_e`` are specified."""
REFERENCE_POWER_MW = 50.0
"""Laser power at which ``signal_e`` is specified."""

_DOMAIN_DARK = 0x4441_524B  # "DARK"
_DOMAIN_NOISE = 0x4E4F_4953  # "NOIS"
_CHUNK_PIXELS = 1 << 16


@dataclass(frozen=True)
class NoiseParameters:
    """The camera's noise model, as configured (``enabled`` False means every source is off)."""

    enabled: bool
    signal_e: float
    full_well_e: float
    read_noise_e: float
    dark_offset_e: float
    dark_pattern_e: float
    dark_current_e_per_s: float
    hot_pixel_fraction: float
    hot_pixel_e: float
    laser_jitter: float

    @classmethod
    def from_config(cls, config: SimConfig) -> NoiseParameters:
        return cls(
            enabled=config.noise,
            signal_e=config.signal_e,
            full_well_e=config.full_well_e,
            read_noise_e=config.read_noise_e,
            dark_offset_e=config.dark_offset_e,
            dark_pattern_e=config.dark_pattern_e,
            dark_current_e_per_s=config.dark_current_e_per_s,
            hot_pixel_fraction=config.hot_pixel_fraction,
            hot_pixel_e=config.hot_pixel_e,
            laser_jitter=config.laser_jitter,
        )


def signal_scale_e(config: SimConfig, exposure_us: float, laser_power_mw: float) -> float:
    """Mean photo-electrons per unit of intensity ("all mirrors ON" = 1) at this exposure and laser power."""
    return config.signal_e * (exposure_us / REFERENCE_EXPOSURE_US) * (laser_power_mw / REFERENCE_POWER_MW)


def dn_per_electron(config: SimConfig, gain: float, bits: int) -> float:
    """ADC counts per electron: full well maps to full scale at gain 1."""
    return gain * (2**bits - 1) / config.full_well_e


@functools.lru_cache(maxsize=4)
def dark_maps(config: SimConfig) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """The fixed dark level (offset + pattern, electrons) and hot-pixel mask of the whole sensor, read-only.

    With noise off both are zero/False: the device then adds nothing to the signal.
    """
    shape = (config.camera_height, config.camera_width)
    if not config.noise:
        dark = np.zeros(shape, dtype=np.float32)
        hot = np.zeros(shape, dtype=bool)
    else:
        rng = np.random.Generator(np.random.Philox(key=derive_key(config.seed, _DOMAIN_DARK)))
        dark = rng.standard_normal(shape, dtype=np.float32)
        dark *= np.float32(config.dark_pattern_e)
        dark += np.float32(config.dark_offset_e)
        np.maximum(dark, 0, out=dark)
        hot = rng.random(shape, dtype=np.float32) < config.hot_pixel_fraction
    dark.setflags(write=False)
    hot.setflags(write=False)
    return dark, hot


class Sensor:
    """Turns noiseless intensities on the ROI into ADC counts, with the camera physics of the config."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.noise = NoiseParameters.from_config(config)
        self._noise_key = derive_key(config.seed, _DOMAIN_NOISE)

    @property
    def dark_pattern_e(self) -> npt.NDArray[np.float32]:
        """Dark offset + fixed pattern of every sensor pixel (camera_height, camera_width), electrons."""
        return dark_maps(self.config)[0]

    @property
    def hot_pixels(self) -> npt.NDArray[np.bool_]:
        """Hot-pixel mask of the whole sensor (camera_height, camera_width)."""
        return dark_maps(self.config)[1]

    def frame_generator(self, frame_index: int) -> np.random.Generator:
        """The noise stream of camera frame number ``frame_index`` (independent of any other frame)."""
        counter = np.array([0, frame_index, 0, 0], dtype=np.uint64)
        return np.random.Generator(np.random.Philox(counter=counter, key=self._noise_key))

    def dark_mean_e(self, roi: tuple[int, int, int, int], exposure_us: float) -> npt.NDArray[np.float32]:
        """Mean dark electrons (offset, pattern, dark current, hot pixels) of the ROI's pixels, flat."""
        x, y, w, h = roi
        if not self.config.noise:
            return np.zeros(w * h, dtype=np.float32)
        dark, hot = dark_maps(self.config)
        exposure_ratio = exposure_us / REFERENCE_EXPOSURE_US
        mean = dark[y : y + h, x : x + w].ravel().copy()
        mean += np.float32(self.config.dark_current_e_per_s * exposure_us * 1e-6)
        mean[hot[y : y + h, x : x + w].ravel()] += np.float32(self.config.hot_pixel_e * exposure_ratio)
        return mean

    def capture(
        self,
        intensity: npt.ArrayLike,
        *,
        roi: tuple[int, int, int, int],
        frame_indices: npt.ArrayLike,
        exposure_us: int,
        gain: float,
        laser_power_mw: float,
        light_on: bool,
        bits: int,
    ) -> npt.NDArray[np.uint16]:
        """ADC counts (n, n_px) uint16 of n exposures of the ROI.

        Args:
            intensity: noiseless intensities (n, w h) from the optics, "all mirrors ON" = 1.
            roi: (x, y, w, h) absolute sensor region the intensities cover.
            frame_indices: camera frame number of each row (keys its noise stream).
            exposure_us, gain, laser_power_mw: current settings.
            light_on: False for dark frames (laser off, shutter closed, interlock tripped).
            bits: ADC resolution (8, 10 or 12 for the pixel formats of the protocol).
        """
        values = np.asarray(intensity, dtype=np.float32)
        x, y, w, h = (int(part) for part in roi)
        config = self.config
        if x < 0 or y < 0 or w < 1 or h < 1 or x + w > config.camera_width or y + h > config.camera_height:
            raise ValueError(f"ROI {roi} not inside the {config.camera_width}x{config.camera_height} sensor")
        if values.ndim != 2 or values.shape[1] != w * h:
            raise ValueError(f"intensity must have shape (n, {w * h}) for ROI {roi}, got {values.shape}")
        indices = np.asarray(frame_indices, dtype=np.int64).reshape(-1)
        if indices.shape != (values.shape[0],) or (indices.size and indices.min() < 0):
            raise ValueError("frame_indices must hold one non-negative camera frame number per frame")
        if not 1 <= bits <= 16:
            raise ValueError(f"bits must be 1..16, got {bits}")
        full_scale = 2**bits - 1
        to_dn = np.float32(dn_per_electron(config, gain, bits))
        signal_scale = signal_scale_e(config, exposure_us, laser_power_mw) if light_on else 0.0

        if not config.noise:
            counts = values * np.float32(signal_scale * to_dn)
            return _to_counts(counts, full_scale)

        n_frames, n_pixels = values.shape
        out = np.empty((n_frames, n_pixels), dtype=np.uint16)
        dark_mean = self.dark_mean_e((x, y, w, h), exposure_us)
        # Cache-sized chunks of frames: every pass below then runs from cache instead of memory.
        chunk = max(1, _CHUNK_PIXELS // n_pixels)
        for start in range(0, n_frames, chunk):
            stop = min(n_frames, start + chunk)
            out[start:stop] = self._noisy_counts(
                values[start:stop], indices[start:stop], signal_scale, dark_mean, to_dn, full_scale
            )
        return out

    def _noisy_counts(
        self,
        values: npt.NDArray[np.float32],
        indices: npt.NDArray[np.int64],
        signal_scale: float,
        dark_mean: npt.NDArray[np.float32],
        to_dn: np.float32,
        full_scale: int,
    ) -> npt.NDArray[np.uint16]:
        config = self.config
        n_frames, n_pixels = values.shape
        generators = [self.frame_generator(int(index)) for index in indices]
        # Fixed draw order per frame: the jitter and one normal per pixel, then the Poisson pixels (below).
        n_words = (n_pixels + 2) // 2
        words = np.empty((n_frames, n_words), dtype=np.uint64)
        for row, generator in enumerate(generators):
            words[row] = generator.bit_generator.random_raw(n_words)
        normals = _box_muller(words)
        jitter = normals[:, 0].astype(np.float64)
        normals = normals[:, 1 : n_pixels + 1]
        frame_scale = (signal_scale * np.maximum(0.0, 1.0 + config.laser_jitter * jitter)).astype(np.float32)

        mean = values * frame_scale[:, None]
        np.maximum(mean, 0, out=mean)
        mean += dark_mean[None, :]
        electrons = mean + np.float32(config.read_noise_e**2)
        np.sqrt(electrons, out=electrons)
        electrons *= normals
        electrons += mean

        low = mean < POISSON_EXACT_BELOW_E
        if low.any():
            read_noise = np.float32(config.read_noise_e)
            for frame in np.flatnonzero(low.any(axis=1)):
                pixels = np.flatnonzero(low[frame])
                shot = generators[frame].poisson(mean[frame, pixels]).astype(np.float32)
                electrons[frame, pixels] = shot + read_noise * normals[frame, pixels]
        electrons *= to_dn
        return _to_counts(electrons, full_scale)


def _box_muller(words: npt.NDArray[np.uint64]) -> npt.NDArray[np.float32]:
    """Two independent float32 standard normals per 64-bit word: (n, k) words -> (n, 2 k) normals.

    The words are read as 2 k 32-bit uniforms (the first k set the radii, the last k the phases). u1 keeps
    32 bits, which truncates the radius at 6.7 sigma (probability 3e-11 per pair).
    """
    half = words.shape[1]
    uniforms = words.view(np.uint32).astype(np.float32)
    radius = uniforms[:, :half]
    radius += np.float32(0.5)
    radius *= np.float32(2.0**-32)
    np.log(radius, out=radius)
    radius *= np.float32(-2.0)
    np.sqrt(radius, out=radius)
    phase = uniforms[:, half:]
    phase *= np.float32(2.0 * np.pi / 2.0**32)
    out = np.empty((words.shape[0], 2 * half), dtype=np.float32)
    np.multiply(radius, np.cos(phase), out=out[:, :half])
    np.multiply(radius, np.sin(phase), out=out[:, half:])
    return out


def _to_counts(dn: npt.NDArray[np.float32], full_scale: int) -> npt.NDArray[np.uint16]:
    np.clip(dn, 0, full_scale, out=dn)
    np.rint(dn, out=dn)
    return dn.astype(np.uint16)
