"""A one-page picture of a calibration record, for a lab notebook (``opu calibrate ... --report report.png``).

:func:`render_report` draws one figure with a panel for each thing the record holds (see :func:`panels_for`):
the dark map and histogram, the exposure sweep, the DMD-to-camera lag, the speckle autocorrelation, the
linear-mode reference with its pixel mask, the estimated matrix against the optics, the fidelity of the
projection schemes and the drift since the baseline. A header says which device, firmware and settings the
record belongs to and when it was taken, so a printed page stands on its own.

The package is split by concern: :mod:`.style` (colours, fonts, number formatting), :mod:`.data` (reading a
record leniently), :mod:`.drawing` (maps, colour bars, scatters), :mod:`.panels` (one function per panel, with the
arrays it needs) and :mod:`.page` (choosing panels, layout, header, figure, saving, path checks). matplotlib is an
optional extra (``pip install "opu-driver[plot]"``), imported only when a report is drawn.
"""

from .page import ReportUnavailableError, check_report_path, figure_size_in, panels_for, render_report
from .panels import PANELS

__all__ = ["ReportUnavailableError", "PANELS", "panels_for", "figure_size_in", "render_report", "check_report_path"]
