"""Features <-> mirror layouts <-> packed DMD bytes."""
from .layouts import Layout, LinedLayout, MacroPixelLayout, SplitLayout, make_layout

__all__ = ["Layout", "LinedLayout", "MacroPixelLayout", "SplitLayout", "make_layout"]
