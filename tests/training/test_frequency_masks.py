"""Frequency masking of the user's log-mel: whole bands per dialogue, nothing else touched."""

import pytest
import torch

from s2s.training.augment import AugmentConfig, mask_frequencies


def test_masks_whole_bands_per_dialogue_and_leaves_the_rest(generator):
    seed = int(torch.randint(1000, (1,), generator=generator))
    torch.manual_seed(seed)
    mel = torch.randn(6, 50, 80, generator=generator) * 3 - 6
    fill = 123.0  # a value the input never holds
    out = mask_frequencies(mel, AugmentConfig(freq_masks=2, freq_width=15), fill)
    assert out.shape == mel.shape, f"seed {seed}"
    masked = out == fill
    kept = ~masked
    assert torch.equal(out[kept], mel[kept]), f"seed {seed}: unmasked values changed"
    # A masked bin is masked on every frame (a band), at most 2 bands of <= 15 bins per dialogue.
    per_bin = masked.all(dim=1)
    assert torch.equal(masked.any(dim=1), per_bin), f"seed {seed}: a mask that is not a whole band"
    assert (per_bin.sum(dim=1) <= 30).all(), f"seed {seed}: {per_bin.sum(dim=1).tolist()}"
    assert per_bin.any(), f"seed {seed}: nothing masked in 6 dialogues"
    # Dialogues get their own bands.
    assert not all(torch.equal(per_bin[0], row) for row in per_bin[1:]), f"seed {seed}"


def test_off_returns_the_input_and_bad_settings_are_refused():
    mel = torch.randn(2, 10, 80)
    assert mask_frequencies(mel, AugmentConfig(freq_masks=0), 0.0) is mel
    with pytest.raises(ValueError, match="freq_masks and freq_width must be >= 0"):
        AugmentConfig(freq_masks=-1)
