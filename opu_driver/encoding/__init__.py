"""Features <-> mirror layouts <-> packed DMD bytes."""

from .encoders import BinaryThreshold, BitPlaneEncoder, TernaryEncoder, TernaryPlanes
from .layouts import Layout, LinedLayout, MacroPixelLayout, SplitLayout, make_layout

__all__ = [
    "Layout",
    "LinedLayout",
    "MacroPixelLayout",
    "SplitLayout",
    "make_layout",
    "BinaryThreshold",
    "TernaryEncoder",
    "TernaryPlanes",
    "BitPlaneEncoder",
]
