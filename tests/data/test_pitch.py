"""The causal pitch track: the F0 of harmonic tones (no octave errors), silence unvoiced, and no frame
that depends on a later sample."""

import math

import pytest
import torch

from s2s.data.pitch import PitchConfig, pitch_track


@pytest.mark.parametrize("f0", [65.0, 110.0, 180.0, 260.0, 380.0])
def test_harmonic_tone_gives_its_f0(f0):
    t = torch.arange(16000, dtype=torch.float64) / 16000
    tone = 0.3 * torch.sin(2 * math.pi * f0 * t) + 0.15 * torch.sin(2 * math.pi * 2 * f0 * t + 1.0)
    track = pitch_track(tone.float())
    assert track.shape == (100, 2)
    steady = track[5:]  # after the first window has filled with the tone
    assert steady[:, 0].min() > 0.95
    lag = 16000 / f0  # integer lags: the estimate is within one lag of the period
    estimate = 2 ** steady[:, 1].median().item()
    assert 16000 / (lag + 1) - 1e-6 <= estimate <= 16000 / (lag - 1) + 1e-6, estimate


def test_silence_is_unvoiced_and_frames_are_causal(generator):
    assert pitch_track(torch.zeros(3200)).abs().max() == 0
    audio = 0.2 * torch.randn(8000, generator=generator)
    full = pitch_track(audio)
    cut = pitch_track(audio[:4321])
    torch.testing.assert_close(full[: len(cut)], cut)


def test_config_refuses_a_window_too_short_for_the_lowest_f0():
    with pytest.raises(ValueError, match="two periods"):
        PitchConfig(window=320, f0_min=60.0)
