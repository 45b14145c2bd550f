"""The light, watched by pilot frames: vectors projected while the light moved are projected again.

The linear mode's projections are scaled by the reference intensity |R r|^2 it calibrated, so they are right only
while the light is the light of the calibration. A *pilot* is a frame of the reference alone, shown among a
call's frames: the sum over the usable outputs of (pilot - dark), divided by the calibrated sum of |R r|^2, is
the light now relative to the light then, its *level*: 1 while the light holds. Its spread is the camera's
noise on a sum over many outputs (shot and read noise, the laser's jitter), well under 1% on the geometries
measured (docs/reliability.md, "The light monitor"), so a level off by more than ``MIN_SHIFT`` is the light
moving, not noise.

Why pilots and not the four-frame data themselves: the pair (e+ + r, e+) does measure |R r|^2, but with a cross
term 2 Re[conj(R r) R e+] that is not noise. It is fixed for a given vector (every bit plane of one row has the
same), grows with the number of features switched on, and on small cameras spreads the estimate by 15%; no
bound on it tells a moved light from an unusual vector. A pilot costs one frame per sequence (under 2% of the
frames at the default sequence length) and has no such term.

Pilots go among the vectors' frames at most one sequence apart, so every sequence shows at least one (the
device runs a call in sequences of consecutive frames); a vector is judged by the pilots on either side of it.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["MIN_SHIFT", "PilotPlan", "pilot_levels"]

MIN_SHIFT = 0.05
"""Relative change of a pilot's level beyond which the light counts as moved (5%): about ten times the spread
of a level under steady light, and well below the 20% of the emulator's ``light`` fault."""


class PilotPlan:
    """Where the pilots go among the frames of ``n_vectors`` vectors of ``per_vector`` frames each, so that no
    ``max_gap_frames`` consecutive frames lack one: one pilot before every group of vectors, one after the last."""

    def __init__(self, n_vectors: int, per_vector: int, max_gap_frames: int) -> None:
        self.group = max(1, (max_gap_frames - 1) // per_vector)
        self.n_pilots = -(-n_vectors // self.group) + 1
        total = self.total_frames = n_vectors * per_vector + self.n_pilots
        # Pilot k comes before the vectors of group k: its position counts the vector frames before it.
        self.pilot_rows = np.arange(self.n_pilots) * (self.group * per_vector + 1)
        self.pilot_rows[-1] = total - 1
        vector_rows = np.ones(total, dtype=bool)
        vector_rows[self.pilot_rows] = False
        self.vector_rows = np.flatnonzero(vector_rows)
        self.n_vectors = n_vectors

    @classmethod
    def most_vectors(cls, max_frames: int, per_vector: int, max_gap_frames: int) -> int:
        """The most vectors whose frames and pilots fit in ``max_frames`` frames (at least 1)."""
        group = max(1, (max_gap_frames - 1) // per_vector)
        n = max(1, (max_frames - 2) * group // (per_vector * group + 1))
        while n > 1 and cls(n, per_vector, max_gap_frames).total_frames > max_frames:
            n -= 1
        while cls(n + 1, per_vector, max_gap_frames).total_frames <= max_frames:
            n += 1
        return n

    def frames(self, vector_frames: np.ndarray, pilot: np.ndarray) -> np.ndarray:
        """The call's frames: the vectors' frames (n_vectors * per_vector, width) with the pilots among them."""
        out = np.empty((self.vector_rows.size + self.n_pilots, vector_frames.shape[1]), dtype=vector_frames.dtype)
        out[self.vector_rows] = vector_frames
        out[self.pilot_rows] = pilot
        return out

    def vector_levels(self, levels: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Each vector's level: of the two pilots around it, the one farther from 1."""
        group = np.arange(self.n_vectors) // self.group
        before, after = levels[group], levels[group + 1]
        return np.where(np.abs(before - 1) >= np.abs(after - 1), before, after)


def pilot_levels(
    pilots: npt.NDArray[np.floating],
    reference_dn: npt.NDArray[np.floating],
    dark_dn: npt.NDArray[np.floating],
    usable: npt.NDArray[np.bool_],
) -> npt.NDArray[np.float64]:
    """The level of each pilot: (pilots, outputs) camera values against the calibrated reference and dark."""
    reference_total = float(np.asarray(reference_dn, dtype=np.float64)[usable].sum())
    light = (np.asarray(pilots, dtype=np.float64)[:, usable] - np.asarray(dark_dn, dtype=np.float64)[usable]).sum(
        axis=1
    )
    return light / reference_total if reference_total > 0 else np.ones(pilots.shape[0])
