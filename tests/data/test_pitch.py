"""The causal pitch track: the F0 of harmonic tones (no octave errors), silence unvoiced, and no frame
that depends on a later sample."""

import math

import pytest
import torch

from s2s.data.pitch import (
    PitchConfig,
    _relative_to_reference,
    pitch_features,
    pitch_initial_state,
    pitch_stream,
    pitch_track,
)


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


def _tone(f0s: list[float], seconds: float, generator: torch.Generator) -> torch.Tensor:
    """Harmonic tones of the given F0s one after another, each `seconds` long, at a random phase."""
    pieces = []
    for f0 in f0s:
        t = torch.arange(int(16000 * seconds), dtype=torch.float64) / 16000
        phase = float(torch.rand(1, generator=generator)) * 2 * math.pi
        pieces.append(
            0.3 * torch.sin(2 * math.pi * f0 * t + phase) + 0.15 * torch.sin(2 * math.pi * 2 * f0 * t + 1.0)
        )
    return torch.cat(pieces).float()


def _streamed(audio: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    state, outs, start, step = pitch_initial_state(audio.shape[0]), [], 0, 0
    while start < audio.shape[1]:
        size = sizes[step % len(sizes)]
        features, state = pitch_stream(audio[:, start : start + size], state)
        outs.append(features)
        start, step = start + size, step + 1
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("sizes", [[640], [160], [2560], [1], [37, 640, 1000, 7, 161, 3200]])
def test_pitch_streamed_in_chunks_equals_the_whole_signal(sizes, generator):
    seed = int(torch.randint(2**31, (1,), generator=generator))
    g = torch.Generator().manual_seed(seed)
    speech_like = torch.stack(
        [
            0.2 * torch.randn(16000 * 2 + 93, generator=g),  # noise: voicing low, mostly unvoiced
            torch.nn.functional.pad(_tone([120.0, 180.0], 1.0, g), (0, 93)),  # voiced, a known F0
        ]
    )
    silence = (torch.rand(speech_like.shape[1] // 1600 + 1, generator=g) > 0.3).repeat_interleave(1600)
    audio = speech_like.clone()
    audio[0] *= silence[: speech_like.shape[1]]  # noise in bursts
    audio[1, 8000:12800] = 0.0  # one pause inside the tone
    whole = pitch_features(audio)
    assert whole.shape == (2, audio.shape[1] // 160, 2), seed
    streamed = _streamed(audio, sizes)
    assert streamed.shape == whole.shape, (seed, sizes)
    # every frame, both streams: the voicing is the same numbers; the relative F0's closed form starts
    # its sums at each chunk, a float64 rounding (~1e-16) far below float32's step
    assert torch.equal(streamed[..., 0], whole[..., 0]), (seed, sizes)
    torch.testing.assert_close(streamed, whole, atol=1e-6, rtol=0, msg=lambda m: f"seed {seed}, {sizes}: {m}")
    assert (whole[1, :, 0] > 0.9).float().mean() > 0.5, f"seed {seed}: the tone is not voiced"


def test_relative_pitch_follows_a_causal_running_reference(generator):
    """A 120 Hz tone settles at 0 (its own reference); a jump to 240 Hz reads +1 octave at once, then
    the reference follows it; every frame equals a plain float recurrence over the raw pitch track
    (prior 150 Hz of weight 10, a running mean, then an exponential one at rate 0.01)."""
    audio = _tone([120.0, 240.0], 2.0, generator)[None]
    features = pitch_features(audio)
    voicing, relative = features[0, :, 0], features[0, :, 1]
    track = pitch_track(audio[0].double())
    assert torch.equal(voicing, track[:, 0].float())
    reference, weight, expected = math.log2(150.0), 10.0, []
    for v, log_f0 in track.tolist():
        voiced = v >= 0.5
        expected.append(log_f0 - reference if voiced else 0.0)
        if voiced:
            weight += 1
            reference += max(1 / weight, 0.01) * (log_f0 - reference)
    torch.testing.assert_close(relative, torch.tensor(expected, dtype=torch.float32), atol=1e-6, rtol=0)
    assert voicing[5:195].min() > 0.95 and voicing[205:].min() > 0.95
    assert relative[150:198].abs().max() < 0.02  # the running mean has converged to the tone
    jump = relative[200:210].max().item()
    assert abs(jump - 1.0) < 0.03, relative[200:210]  # one octave up within the window of the jump
    assert relative[205:].diff().max() < 0.01  # then it falls back as the reference follows
    assert 0.05 < relative[-1].item() < jump - 0.5
    cut = pitch_features(audio[:, :12345])
    assert torch.equal(cut, features[:, : cut.shape[1]])


def test_pitch_state_and_input_errors_say_what_to_pass():
    with pytest.raises(ValueError, match="pitch_initial_state"):
        pitch_stream(torch.zeros(2, 640), pitch_initial_state(3))
    with pytest.raises(ValueError, match=r"\(B, samples\)"):
        pitch_features(torch.zeros(640))


@pytest.mark.parametrize("frames", [0, 1, 7, 511, 512, 1500])
def test_the_closed_form_reference_equals_the_frame_by_frame_recurrence(frames, generator):
    """Random tracks (voiced runs and gaps), streams starting from the prior, mid-mean, and long past
    the switch to the exponential mean, against the recurrence in float64 Python arithmetic."""
    seed = int(torch.randint(2**31, (1,), generator=generator))
    g = torch.Generator().manual_seed(seed)
    config = PitchConfig()
    voicing = torch.rand(4, frames, generator=g, dtype=torch.float64)
    voicing[:, : frames // 3] = 0.9  # a long voiced run: the switch from the mean falls inside
    log_f0 = 6.5 + torch.randn(4, frames, generator=g, dtype=torch.float64)
    track = torch.stack([voicing, log_f0], dim=-1)
    reference = torch.tensor([math.log2(150.0), 7.0, 6.0, 7.5], dtype=torch.float64)
    weight = torch.tensor([10.0, 55.0, 99.5, 3000.0], dtype=torch.float64)
    relative, new_reference, new_weight = _relative_to_reference(track, reference, weight, config)
    assert relative.shape == (4, frames) and torch.isfinite(relative).all(), seed
    for b in range(4):
        ref, w = reference[b].item(), weight[b].item()
        for t in range(frames):
            v, x = voicing[b, t].item() >= config.voiced, log_f0[b, t].item()
            expected = x - ref if v else 0.0
            got = relative[b, t].item()
            assert abs(got - expected) < 1e-10, (seed, b, t, got, expected)
            if v:
                w += 1
                ref += max(1 / w, config.reference_rate) * (x - ref)
        assert abs(new_reference[b].item() - ref) < 1e-10 and new_weight[b].item() == w, (seed, b)
