"""Array plumbing shared by the lightonml front and its encoders: PyTorch tensors in and out without importing
torch unless the caller already handed us a tensor."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

__all__ = ["is_tensor", "to_numpy", "like_input"]


def is_tensor(X: Any) -> bool:
    """True for a PyTorch tensor; never imports torch (a tensor can only exist if torch is already loaded)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(X, torch.Tensor)


def to_numpy(X: Any) -> tuple[np.ndarray, bool]:
    """``X`` as a NumPy array (a tensor is detached and moved to the CPU), and whether it was a tensor."""
    if is_tensor(X):
        return X.detach().cpu().numpy(), True
    return np.asarray(X), False


def like_input(Y: np.ndarray, was_tensor: bool) -> Any:
    """``Y`` back in the caller's kind: a tensor (sharing memory, as lightonml's ``torch.from_numpy``) or ``Y``."""
    if not was_tensor:
        return Y
    torch = sys.modules["torch"]
    return torch.from_numpy(np.ascontiguousarray(Y))
