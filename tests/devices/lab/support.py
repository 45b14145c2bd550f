"""Rig files for the emulated lab rig, and its ground truth, for the lab tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SMALL_LAB_QUERY = "dmd=96x64&camera=64x48&cell=4"


def write_rig(
    folder: Path,
    *,
    sim: str = SMALL_LAB_QUERY,
    dmd: str = 'backend = "emulated"',
    camera: str = 'backend = "emulated"',
    light: str = 'backend = "emulated"',
    picture_time_us: int = 500,
    name: str = "rig.toml",
) -> Path:
    """A rig file of emulated parts (each part's section body replaceable) in ``folder``; returns its path."""
    path = folder / name
    path.write_text(
        f'[rig]\nname = "test rig"\nserial_number = "LAB-TEST"\npicture_time_us = {picture_time_us}\n\n'
        f'[dmd]\n{dmd}\n\n[camera]\n{camera}\n\n[light]\n{light}\n\n[emulator]\nsim = "{sim}"\n'
    )
    return path


def exact_lab_linear_matrix(opu, n_features: int) -> np.ndarray:
    """Re[exp(-i phi) R] (n_features x n_outputs) of an emulated lab rig: the fields of each feature's mirrors and
    of the reference's, from the world's optics, on the ROI the last linear_transform used."""
    world = opu.emulator
    layout = opu.linear_mode.layout(n_features)
    bits = np.eye(layout.n_table_features, dtype=np.uint8)  # each feature alone, then each reference feature
    packed = layout.expand(bits)
    amplitudes = world.optics.cell_amplitudes(packed).astype(np.complex64)
    fields = amplitudes @ world.ground_truth.transmission()
    reference = fields[n_features:].sum(axis=0)  # the reference's features, all on
    return np.real(np.conj(reference) / np.abs(reference) * fields[:n_features])
