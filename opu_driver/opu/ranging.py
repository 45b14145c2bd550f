"""Auto-ranging of the linear mode: a reference level and an exposure for each vector, from its light.

A four-frame projection of e = e+ - e- against a reference r measures, per output, y = 2 N Re[conj(a) b] with
a = (R r), b = (R e) and N the electrons per unit of intensity (exposure x light). Its noise is mostly the shot
noise of its two bright frames, |a + b+|^2 and |a + b-|^2. With I_r = E|a|^2 and I_e = E|b|^2 in electrons:

    SNR^2 = 2 I_r I_e / (2 (I_r + I_e) + read and ADC noise)

The exposure is bounded by the brightest frame, |a + b+|^2 (or |a + b-|^2): N (I_r + I_+) x peak <= full
scale. At a fixed brightest frame the SNR is largest with I_r near I_e / sqrt(2), and then grows with the
exposure. A sparse error lights few mirrors: beside the whole reference its I_e is hundreds of times smaller than
I_r, the brightest frame is the reference's, and most of the camera's range is the reference's shot noise. So
each vector gets:

- a reference level j of L (the split layout's reference rows, :meth:`SplitLayout.reference_bits`): the reference
  at amplitude j/L, intensity (j/L)^2 I_r, the level whose intensity is closest to the light of the vector's
  brighter half, max(I_+, I_-) = I_e / 2 (near enough the optimum, and simple to state);
- an exposure factor k (the power of sqrt(2) nearest in ratio) that brings the mean of its brightest frame to
  full scale / ``peak_factor``, within the camera's exposure range and ``max_exposure_factor``.

The outputs are divided by 2 sqrt(reference x entry variance x k), with the reference measured at that level and
exposure, so B is the same matrix in every range (docs/linear-noise.md derives this and the fidelity it gives).

The two-frame scheme measures y = |a + b+|^2 - |a + b-|^2 = 2 Re[conj(a) (b+ - b-)] + |b+|^2 - |b-|^2: its error
term grows with the signal's intensity, the interference term only with its amplitude. Its noise-to-signal ratio
is about (1 + x)^2 / (2 P x) + x / 2 with x = I_+ / I_r and P the brightest frame's electrons, smallest at
x = 1 / sqrt(1 + P): about 1/32 for the 1,000 to 3,000 electrons a camera's full well / peak gives, and the optimum
is broad (within 0.005 of fidelity from 1/16 to 1/64). So a two-frame vector brighter than 1/32 of the whole
reference gets the whole reference and a dimmed signal, signal level m of L (the split layout's signal rows,
``SplitLayout.signal_level``: field m/L, intensity (m/L)^2), the one that brings its light closest to 1/32 of the
reference; a fainter one gets the whole signal and the reference level that does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["Range", "choose_ranges", "FACTOR_STEP", "FOUR_FRAME_RATIO", "TWO_FRAME_RATIO"]

FACTOR_STEP = 2**0.5
"""Exposure factors are powers of this: few distinct ranges per call, each within sqrt(2) of its ideal."""
FOUR_FRAME_RATIO = 1.0
"""The four-frame scheme's wanted light of a vector's brighter half, as a share of its reference's."""
TWO_FRAME_RATIO = 1 / 32
"""The two-frame scheme's: its error term wants a reference about 32 times the signal's brighter half."""


@dataclass(frozen=True, order=True)
class Range:
    """Where a vector is projected: its reference level and signal level (of L; L is the whole) and the exposure
    as a multiple of the settings' exposure."""

    level: int
    signal_level: int
    factor: float


def choose_ranges(
    light_dn: npt.NDArray[np.floating],
    reference_dn: float,
    levels: list[int],
    n_levels: int,
    target_dn: float,
    factor_range: tuple[float, float],
    signal_levels: list[int] | None = None,
    ratio: float = FOUR_FRAME_RATIO,
) -> list[Range]:
    """The range of each vector.

    Args:
        light_dn: mean intensity (DN above dark, at the calibration's settings) of each vector's brighter signal
            frame (its e+ or its e-) with the whole signal, > 0.
        reference_dn: mean intensity of the whole reference at those settings.
        levels: the reference levels that may be used (1..n_levels).
        n_levels: L, the whole reference's (and signal's) level.
        target_dn: where the brightest frame's mean should sit.
        factor_range: the smallest and largest exposure factor allowed.
        signal_levels: the signal levels that may dim a vector too bright for ``ratio`` of the whole reference
            (None: the whole signal always).
        ratio: the wanted light of the brighter half as a share of the reference's.

    Returns:
        one Range per vector.
    """
    light = np.maximum(np.asarray(light_dn, dtype=np.float64), 1e-12)
    reference_dn = max(float(reference_dn), 1e-12)
    reference_levels = np.asarray(sorted(levels), dtype=np.int64)
    reference = (reference_levels / n_levels) ** 2 * reference_dn
    # the reference level whose intensity is closest to light / ratio, in ratio
    distance = np.abs(np.log(reference[None, :] * ratio) - np.log(light[:, None]))
    chosen = reference_levels[np.argmin(distance, axis=1)]
    dimmed = np.full(light.shape, n_levels, dtype=np.int64)
    if signal_levels:
        candidates = np.asarray(sorted(signal_levels), dtype=np.int64)
        bright = light > ratio * reference_dn  # too bright even for the whole reference: dim the signal
        shown = (candidates[None, :] / n_levels) ** 2 * light[bright, None]
        dimmed[bright] = candidates[np.argmin(np.abs(np.log(shown) - np.log(ratio * reference_dn)), axis=1)]
        chosen[bright] = n_levels
    total = (dimmed / n_levels) ** 2 * light + (chosen / n_levels) ** 2 * reference_dn
    steps = np.round(np.log(target_dn / total) / np.log(FACTOR_STEP))
    factors = np.clip(FACTOR_STEP**steps, factor_range[0], factor_range[1])
    return [Range(int(j), int(m), float(k)) for j, m, k in zip(chosen, dimmed, factors, strict=True)]
