"""Log-mel front end: equal to an independent float64 reference, and streaming == offline."""

import numpy as np
import pytest
import torch

from s2s.data.features import LogMel, LogMelConfig


def _reference_log_mel(audio: np.ndarray, config: LogMelConfig) -> np.ndarray:
    """float64 numpy: causal framing, periodic Hann, power spectrum, HTK triangular mel filters."""
    padded = np.concatenate([np.zeros(config.window - config.hop), audio.astype(np.float64)])
    frames = len(audio) // config.hop
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(config.window) / config.window)
    spectra = np.stack(
        [
            np.abs(np.fft.rfft(padded[t * config.hop : t * config.hop + config.window] * window)) ** 2
            for t in range(frames)
        ]
    )

    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def mel_to_hz(m):
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    nyquist = config.sample_rate / 2
    edges = mel_to_hz(
        np.linspace(hz_to_mel(config.f_min), hz_to_mel(config.f_max or nyquist), config.n_mels + 2)
    )
    bins = np.linspace(0, nyquist, config.window // 2 + 1)
    rising = (bins[:, None] - edges[None, :-2]) / (edges[1:-1] - edges[:-2])[None, :]
    falling = (edges[None, 2:] - bins[:, None]) / (edges[2:] - edges[1:-1])[None, :]
    filters = np.maximum(0.0, np.minimum(rising, falling))
    return np.log(spectra @ filters + config.floor)


def test_log_mel_matches_float64_reference(generator):
    config = LogMelConfig()
    audio = 0.3 * torch.randn(2, 16000 + 77, generator=generator)
    mel = LogMel(config)(audio)
    assert mel.shape == (2, (16000 + 77) // 160, 80)
    for row in range(2):
        reference = _reference_log_mel(audio[row].numpy(), config)
        # log of small mel energies is sensitive; compare where the energy is meaningful
        np.testing.assert_allclose(mel[row].double().numpy(), reference, atol=2e-3, rtol=1e-4)


@pytest.mark.parametrize("chunk", [1, 159, 160, 161, 640, 2000, "random"])
def test_streaming_frames_equal_offline_frames(chunk, generator):
    front_end = LogMel()
    audio = 0.2 * torch.randn(3, 16000 * 2 + 123, generator=generator)
    offline = front_end(audio)
    state = front_end.initial_state(3)
    pieces, position = [], 0
    while position < audio.shape[1]:
        size = int(torch.randint(1, 3000, (1,), generator=generator)) if chunk == "random" else chunk
        frames, state = front_end.stream(audio[:, position : position + size], state)
        pieces.append(frames)
        position += size
    streamed = torch.cat(pieces, dim=1)
    assert streamed.shape == offline.shape == (3, audio.shape[1] // 160, 80)
    assert torch.isfinite(streamed).all()
    torch.testing.assert_close(streamed, offline, atol=1e-5, rtol=0)


def test_frames_are_causal(generator):
    """Changing samples after a frame's end never changes that frame."""
    front_end = LogMel()
    audio = torch.randn(1, 8000, generator=generator)
    changed = audio.clone()
    changed[:, 3200:] = torch.randn(1, 4800, generator=generator)
    before, after = front_end(audio), front_end(changed)
    assert torch.equal(before[:, :20], after[:, :20])  # frame 19 ends at sample 3200
    assert not torch.equal(before[:, 20], after[:, 20])


def test_bad_input_is_named():
    front_end = LogMel()
    with pytest.raises(ValueError, match=r"mono audio shaped \(batch, samples\)"):
        front_end(torch.zeros(1, 2, 1600))
    with pytest.raises(TypeError, match="float audio"):
        front_end(torch.zeros(1, 1600, dtype=torch.int16))
    with pytest.raises(ValueError, match="stream state must be"):
        front_end.stream(torch.zeros(2, 160), front_end.initial_state(3))
    with pytest.raises(ValueError, match="hop <= window"):
        LogMelConfig(hop=500, window=400)
