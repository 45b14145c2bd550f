"""The documents match the code."""

from firmware_sim.config import SimConfig
from tests.support import DOCS_DIR

DOCS = DOCS_DIR


def test_every_emulator_option_is_documented_with_its_default():
    text = (DOCS / "emulator.md").read_text(encoding="utf-8")
    for key, meaning, default in SimConfig.describe():
        assert f"| `{key}` | {meaning} | {default} |" in text, key


def test_the_scaling_page_holds_the_table_and_break_evens_its_model_computes():
    from opu_tools.scaling import break_even_size, markdown_table

    text = (DOCS / "scaling.md").read_text(encoding="utf-8")
    assert markdown_table() in text
    for frames in (4, 2):
        for energy in (False, True):
            assert f"{break_even_size(frames, energy=energy):.1e}".replace("e+", "e") in text
