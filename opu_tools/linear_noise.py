"""The noise model of the linear mode's four-frame scheme, for predicting its fidelity (docs/linear-noise.md).

Per output and vector, in electrons, with a = R r the reference's field, b+- = R e+- the error's, intensities
I_r = E|a|^2, I_+- = E|b+-|^2, I_e = I_+ + I_-, all at exposure factor k:

    y = F1 - F2 - F3 + F4 = 2 Re[conj(a) (b+ - b-)],      E[y^2] = 2 k^2 I_r I_e
    var(noise) = k (2 I_r + 2 I_e) + 4 read^2 + 4 q^2 / 12 + jitter^2 (E[F1^2] + E[F3^2])

(shot noise of the four frames, read noise, ADC rounding of q electrons per DN, the laser's frame-to-frame jitter
on the two bright frames, whose intensity is exponential: E[F^2] = 2 E[F]^2). The correlation with the exact
projection is sqrt(SNR^2 / (1 + SNR^2)), times sqrt(1 - z) for the share z of outputs zeroed because a bright
frame saturated (P(F > full scale) = exp(-full scale / E[F]) for an exponential intensity).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from opu_driver.opu.ranging import choose_ranges

__all__ = ["LinearNoiseModel", "predict_fidelity"]


@dataclass(frozen=True)
class LinearNoiseModel:
    """The emulator's defaults at the reference geometry, with the linear mode's split layout for 1000 features.

    Attributes:
        all_on_e: mean electrons per pixel with every mirror ON (exposure 400 us, 50 mW).
        reference_share: the whole reference's mean intensity, as a share of all_on_e (its share of the mirrors).
        feature_share: one signal feature's mean intensity, as a share of all_on_e. Its 484 mirrors (22 x 22) are
            0.093% of the DMD, but a macro-pixel that is not aligned with the optics' 8 x 8 input cells fills some
            cells partly, and a cell's power goes with the square of its filled share: the emulator's ground truth
            gives 0.071% of the reference's intensity per feature, 0.76 of the share of mirrors.
        full_well_e: electrons at full scale (gain 1); read_noise_e; jitter: relative rms of the laser per frame.
        reference_levels: L; peak_factor and max_factor: auto-ranging's target and longest exposure.
    """

    all_on_e: float = 2500.0
    reference_share: float = 570 / 1140
    feature_share: float = 0.000711 * 570 / 1140
    full_well_e: float = 10000.0
    read_noise_e: float = 6.0
    jitter: float = 0.002
    reference_levels: int = 8
    peak_factor: float = 8.0
    max_factor: float = 64.0

    def fidelity(self, nonzero: float, bits: int, level: int | None = None, factor: float = 1.0) -> float:
        """Predicted correlation for a ternary vector of ``nonzero`` entries (half +1, half -1) with the reference at
        ``level`` (None: whole) and the exposure times ``factor``, on a camera of ``bits`` bits."""
        q = self.full_well_e / (2**bits - 1)
        share = 1.0 if level is None else (level / self.reference_levels) ** 2
        i_r = factor * self.all_on_e * self.reference_share * share
        i_half = factor * self.all_on_e * self.feature_share * nonzero / 2
        i_e = 2 * i_half
        signal = 2 * i_r * i_e
        bright = i_r + i_half
        noise = 2 * i_r + 2 * i_e + 4 * self.read_noise_e**2 + q**2 / 3 + self.jitter**2 * 2 * 2 * bright**2
        snr2 = signal / noise
        zeroed = min(1.0, 2 * math.exp(-self.full_well_e / bright))
        return math.sqrt(snr2 / (1 + snr2) * (1 - zeroed))

    def auto_range(self, nonzero: float) -> tuple[int, float]:
        """The (level, exposure factor) auto-ranging picks for such a vector (the driver's own rule)."""
        light = self.all_on_e * self.feature_share * nonzero / 2  # the brighter of e+ and e-
        (where,) = choose_ranges(
            np.array([light]),
            self.all_on_e * self.reference_share,
            list(range(1, self.reference_levels + 1)),
            self.reference_levels,
            self.full_well_e / self.peak_factor,
            (0.0, self.max_factor),
        )
        return where.level, where.factor


def predict_fidelity(density: float, bits: int, auto: bool, n_features: int = 1000) -> float:
    """Predicted four-frame fidelity of ternary errors with ``density`` nonzero entries, one range or auto-ranged."""
    model = LinearNoiseModel()
    nonzero = max(1.0, density * n_features)
    if not auto:
        return model.fidelity(nonzero, bits)
    level, factor = model.auto_range(nonzero)
    return model.fidelity(nonzero, bits, level, factor)
