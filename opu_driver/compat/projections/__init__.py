"""lightonml 1.4's ``OPUMap`` wrappers on the front: :mod:`.sklearn` (a scikit-learn transformer) and :mod:`.torch`
(a PyTorch module). Each needs its library installed; importing this package imports neither."""
