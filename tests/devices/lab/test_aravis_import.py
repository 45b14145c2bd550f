"""Without PyGObject the Aravis camera backend still imports, and opening it says what to install."""

from __future__ import annotations

import sys

import pytest

from opu_driver.devices.lab.aravis import AravisCamera, load_aravis
from opu_driver.errors import InvalidInputError, LibraryLoadError


def test_a_missing_pygobject_is_a_library_load_error_with_the_install_commands(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "gi", None)  # what Python does for a package that is not installed
    with pytest.raises(LibraryLoadError) as caught:
        load_aravis()
    assert "apt-get install -y libaravis-0.8-0 gir1.2-aravis-0.8" in str(caught.value)
    assert "opu-driver[aravis]" in str(caught.value)
    with pytest.raises(LibraryLoadError):
        AravisCamera("127.0.0.1").open()


@pytest.mark.parametrize(
    "kwargs",
    [{"n_buffers": 0}, {"n_buffers": 1025}, {"n_buffers": True}, {"packet_size": 100}, {"packet_size": 9000.0}]
    + [{"free_run_frame_rate_hz": 0.0}, {"free_run_frame_rate_hz": float("inf")}, {"frame_retention_us": 0}],
)
def test_constructor_refuses_bad_arguments(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidInputError):
        AravisCamera("127.0.0.1", **kwargs)  # type: ignore[arg-type]
