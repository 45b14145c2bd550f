"""What each package loads when imported: the one-way imports the contracts describe, checked at run time.

import-linter (``lint-imports``, in CI) checks the import graph statically; these tests check what a user's
process really loads, in a fresh interpreter each.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support import REPO_ROOT


def _loaded_after(code: str) -> list[str]:
    """The top-level packages of this project loaded after running ``code`` in a fresh interpreter."""
    probe = code + "\nimport json, sys\nprint(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    return [name for name in loaded if name in ("opu_driver", "firmware_sim", "dfa_client", "opu_tools")]


@pytest.mark.parametrize(
    "module",
    [
        "firmware_sim",
        "firmware_sim.config",
        "firmware_sim.registry",
        "firmware_sim.usb_backend",
        "firmware_sim.pty_server",
        "firmware_sim.device",
    ],
)
def test_the_emulator_loads_nothing_of_the_driver(module: str) -> None:
    assert _loaded_after(f"import {module}") == ["firmware_sim"]


def test_the_driver_loads_the_emulator_only_when_a_sim_url_is_opened() -> None:
    assert _loaded_after("import opu_driver, opu_driver.calibration, opu_driver.service") == [
        "dfa_client",
        "opu_driver",
    ]  # the service's wire format is the client's
    assert "firmware_sim" in _loaded_after("import opu_driver\nopu_driver.open('sim://?dmd=16x8&camera=8x8').close()")


def test_the_client_loads_the_driver_only_for_its_in_process_backend() -> None:
    assert _loaded_after("import dfa_client, dfa_client.dfa, dfa_client.nn, dfa_client.train") == ["dfa_client"]
    loaded = _loaded_after("import dfa_client\ndfa_client.connect('sim://?dmd=16x8&camera=8x8', 4).close()")
    assert "opu_driver" in loaded and "opu_tools" not in loaded


def test_nothing_but_the_command_loads_the_tools() -> None:
    assert "opu_tools" not in _loaded_after("import opu_driver, firmware_sim, dfa_client")
