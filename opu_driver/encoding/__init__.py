"""Features <-> mirror layouts <-> packed DMD bytes."""
from .layouts import Layout, LinedLayout, MacroPixelLayout, make_layout

__all__ = ["Layout", "LinedLayout", "MacroPixelLayout", "make_layout"]
