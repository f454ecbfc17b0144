"""Audio I/O: round trips, resampling against an analytic signal, and errors that name the problem."""

import numpy as np
import pytest
import soundfile
import torch

from s2s.data.audio import AudioError, load_audio, resample, save_audio


def test_save_load_round_trip_is_exact_for_pcm16(tmp_path, generator):
    audio = (torch.randint(-32767, 32768, (2, 4001), generator=generator).float() / 32767).clamp(-1, 1)
    save_audio(tmp_path / "a.wav", audio, 16000)
    loaded, rate = load_audio(tmp_path / "a.wav", channels=2)
    assert rate == 16000 and loaded.shape == (2, 4001)
    torch.testing.assert_close(loaded, audio, atol=1.0 / 32767, rtol=0)
    part, _ = load_audio(tmp_path / "a.wav", start=1000, frames=500)
    torch.testing.assert_close(part, loaded[:, 1000:1500], atol=0, rtol=0)


def test_resample_matches_analytic_sine():
    time_in = np.arange(22050) / 22050
    time_out = np.arange(16000) / 16000
    tone = torch.from_numpy(np.sin(2 * np.pi * 440.0 * time_in)).float()
    expected = np.sin(2 * np.pi * 440.0 * time_out)
    result = resample(tone, 22050, 16000).double().numpy()
    assert result.shape == (16000,)
    inner = slice(200, -200)  # edges see zero padding
    assert np.abs(result[inner] - expected[inner]).max() < 2e-3


def test_load_resamples_to_the_requested_rate(tmp_path):
    soundfile.write(tmp_path / "a.wav", np.zeros((22050, 2), dtype=np.float32), 22050)
    audio, rate = load_audio(tmp_path / "a.wav", sample_rate=16000)
    assert rate == 16000 and audio.shape == (2, 16000)


def test_bad_files_get_clear_errors(tmp_path):
    with pytest.raises(AudioError, match="does not exist"):
        load_audio(tmp_path / "missing.wav")
    (tmp_path / "noise.wav").write_bytes(b"not a wav at all" * 100)
    with pytest.raises(AudioError, match=r"cannot read .*noise\.wav as audio"):
        load_audio(tmp_path / "noise.wav")
    soundfile.write(tmp_path / "mono.wav", np.zeros(1600), 16000)
    with pytest.raises(AudioError, match=r"has 1 channel\(s\) but 2 are expected.*stereo"):
        load_audio(tmp_path / "mono.wav", channels=2)
    bad = np.zeros((1600, 2), dtype=np.float32)
    bad[10, 1] = np.nan
    soundfile.write(tmp_path / "nan.wav", bad, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="1 NaN or infinite"):
        load_audio(tmp_path / "nan.wav")


def test_refused_save_keeps_the_existing_file(tmp_path):
    good = torch.full((2, 800), 0.25)
    save_audio(tmp_path / "keep.wav", good, 16000)
    before = (tmp_path / "keep.wav").read_bytes()
    with pytest.raises(AudioError, match="NaN or infinite"):
        save_audio(tmp_path / "keep.wav", torch.full((2, 800), float("inf")), 16000)
    with pytest.raises(AudioError, match=r"must be \(channels, samples\)"):
        save_audio(tmp_path / "keep.wav", torch.zeros(1, 2, 800), 16000)
    assert (tmp_path / "keep.wav").read_bytes() == before
    assert not list(tmp_path.glob("*.partial"))
