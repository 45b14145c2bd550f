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
- an exposure factor k (a power of sqrt(2), floored) that brings the mean of its brightest frame to
  full scale / ``peak_factor``, within the camera's exposure range and ``max_exposure_factor``.

The outputs are divided by 2 sqrt(reference x entry variance x k), with the reference measured at that level and
exposure, so B is the same matrix in every range (docs/linear-noise.md derives this and the fidelity it gives).
The two-frame scheme keeps the whole reference: its bias |b+|^2 - |b-|^2 shrinks only against a strong one.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["choose_ranges", "FACTOR_STEP"]

FACTOR_STEP = 2**0.5
"""Exposure factors are powers of this: few distinct ranges per call, each within sqrt(2) of its ideal."""


def choose_ranges(
    light_dn: npt.NDArray[np.floating],
    reference_dn: float,
    levels: list[int],
    n_levels: int,
    target_dn: float,
    factor_range: tuple[float, float],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """The reference level and exposure factor of each vector.

    Args:
        light_dn: mean intensity (DN above dark, at the calibration's settings) of each vector's brighter signal
            frame (its e+ or its e-), > 0.
        reference_dn: mean intensity of the whole reference at those settings.
        levels: the levels that may be used (1..n_levels).
        n_levels: L, the whole reference's level.
        target_dn: where the brightest frame's mean should sit.
        factor_range: the smallest and largest exposure factor allowed.

    Returns:
        (levels, factors), one each per vector.
    """
    light = np.maximum(np.asarray(light_dn, dtype=np.float64), 1e-12)
    candidates = np.asarray(sorted(levels), dtype=np.int64)
    reference = (candidates / n_levels) ** 2 * max(reference_dn, 1e-12)
    # the level whose reference intensity is closest to the vector's light, in ratio
    distance = np.abs(np.log(reference[None, :]) - np.log(light[:, None]))
    chosen = candidates[np.argmin(distance, axis=1)]
    total = light + (chosen / n_levels) ** 2 * reference_dn
    steps = np.floor(np.log(target_dn / total) / np.log(FACTOR_STEP))
    factors = np.clip(FACTOR_STEP**steps, factor_range[0], factor_range[1])
    return chosen, factors
