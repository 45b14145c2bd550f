"""Compatible fronts for scripts written against other OPU libraries (lightonml 1.4: :mod:`.lightonml` and
:mod:`.encoding`). They sit at the top of the driver and use the Opu's public API only."""
