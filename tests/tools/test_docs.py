"""The documents match the code."""

from firmware_sim.config import SimConfig
from tests.support import DOCS_DIR

DOCS = DOCS_DIR


def test_every_emulator_option_is_documented_with_its_default():
    text = (DOCS / "emulator.md").read_text(encoding="utf-8")
    for key, meaning, default in SimConfig.describe():
        assert f"| `{key}` | {meaning} | {default} |" in text, key
