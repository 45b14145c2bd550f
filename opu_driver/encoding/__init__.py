"""Features <-> mirror layouts <-> packed DMD bytes (DESIGN.md layer "encoding")."""
from .layouts import Layout, LinedLayout, MacroPixelLayout, make_layout

__all__ = ["Layout", "LinedLayout", "MacroPixelLayout", "make_layout"]
