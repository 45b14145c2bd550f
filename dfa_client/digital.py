"""The digital backend (``digital://?seed=N``): an exact numpy projector with the optical one's statistics.

B has independent standard normal entries drawn from ``numpy.random.default_rng(seed)``, as the linear mode's
effective matrix has (zero mean, unit variance). It is the reference that optical DFA is compared with.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

import numpy as np
import numpy.typing as npt

from .base import Projector, ProjectorInfo
from .errors import InvalidInputError, UnsupportedUrlError

__all__ = ["DigitalProjector", "parse_digital_url"]


def parse_digital_url(url: str) -> int:
    """The seed of a ``digital://?seed=N`` URL (0 when absent)."""
    parts = urlsplit(url)
    if parts.scheme != "digital" or parts.netloc or parts.path not in ("", "/"):
        raise UnsupportedUrlError(f"{url!r}: the digital backend's URL is digital://?seed=N")
    query = dict(parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False))
    unknown = set(query) - {"seed"}
    if unknown:
        raise UnsupportedUrlError(f"{url!r}: unknown option(s) {sorted(unknown)}; digital:// takes seed only")
    try:
        seed = int(query.get("seed", "0"))
    except ValueError:
        raise UnsupportedUrlError(f"{url!r}: seed must be an integer >= 0") from None
    if seed < 0:
        raise UnsupportedUrlError(f"{url!r}: seed must be an integer >= 0")
    return seed


class DigitalProjector(Projector):
    """E @ B with a seeded standard normal B (float32), computed in float64 and returned as float32."""

    backend = "digital"

    def __init__(self, url: str, n_components: int, *, seed: int | None = None, **options: Any) -> None:
        url_seed = parse_digital_url(url)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
            raise InvalidInputError(f"seed must be an integer >= 0, got {seed!r}")
        super().__init__(url, n_components, **options)
        self.seed = url_seed if seed is None else int(seed)
        self._matrix: npt.NDArray[np.float32] | None = None
        if self.n_features is not None:
            self._fix_features(self.n_features)

    def _fix_features(self, n_features: int) -> None:
        super()._fix_features(n_features)
        rng = np.random.default_rng(self.seed)
        self._matrix = rng.standard_normal((n_features, self.n_components), dtype=np.float32)

    @property
    def matrix(self) -> npt.NDArray[np.float32] | None:
        """B (n_features x n_components), once n_features is known."""
        return self._matrix

    def _project(self, E: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float32]:
        assert self._matrix is not None
        return (E @ self._matrix.astype(np.float64)).astype(np.float32)

    @property
    def info(self) -> ProjectorInfo:
        return ProjectorInfo(
            "digital",
            self.url,
            self.n_features,
            self.n_components,
            self.scheme,
            self.n_bits,
            self.max_batch,
            {"seed": self.seed},
        )
