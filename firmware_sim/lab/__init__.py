"""Emulators of the parts of a lab-built OPU: each speaks its device's own interface (a shared library's calls,
USB HID reports, a serial line), and the emulated optics turn the pictures shown into camera images."""
