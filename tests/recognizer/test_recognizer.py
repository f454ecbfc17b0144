"""The model and the transcription API: lengths, batching and padding change nothing; audio == log-mel."""

import numpy as np
import pytest
import torch

from s2s.data.features import LogMel, LogMelConfig
from s2s.data.tasks import say_in_german
from s2s.recognizer.model import CTCRecognizer, RecognizerConfig
from s2s.recognizer.recognizer import Recognizer
from s2s.recognizer.vocabulary import vocabulary_from_task


def _recognizer(seed: int, **changes) -> Recognizer:
    task = say_in_german().describe()
    vocabulary = vocabulary_from_task(task)
    torch.manual_seed(seed)
    model = CTCRecognizer(RecognizerConfig(classes=vocabulary.size, channels=32, gru_hidden=16, **changes))
    with torch.no_grad():  # a strong blank-free head, so that random weights emit words to compare
        model.head.bias.copy_(torch.linspace(-2, 2, vocabulary.size))
    return Recognizer(model, vocabulary, LogMelConfig(), task, batch_size=3)


def test_the_default_model_is_small():
    model = CTCRecognizer(RecognizerConfig(classes=11))
    assert 500_000 < model.parameter_count() <= 1_000_000


@pytest.mark.parametrize("subsampling", [1, 2, 4, 8])
def test_output_lengths_are_the_convolutions_output(subsampling):
    model = CTCRecognizer(
        RecognizerConfig(classes=5, channels=8, gru_hidden=8, subsampling=subsampling)
    ).eval()
    for frames in (1, 2, 3, 7, 8, 9, 100, 101):
        out = torch.zeros(1, 80, frames)
        for conv in model.convs:
            out = conv(out)
        assert model.output_lengths(torch.tensor([frames])).item() == out.shape[-1], (subsampling, frames)


def test_padding_and_batching_do_not_change_the_log_probabilities(generator):
    seed = generator.initial_seed()
    model = _recognizer(seed).model
    lengths = [130, 57, 9, 88]
    mels = [torch.randn(n, 80, generator=generator) for n in lengths]
    batch = torch.nn.utils.rnn.pad_sequence(mels, batch_first=True)
    with torch.no_grad():
        together, out_lengths = model(batch, torch.tensor(lengths))
        for row, mel in enumerate(mels):
            alone, alone_length = model(mel[None], torch.tensor([mel.shape[0]]))
            assert out_lengths[row] == alone_length[0]
            torch.testing.assert_close(
                together[row, : out_lengths[row]],
                alone[0],
                rtol=1e-5,
                atol=1e-5,
                msg=f"seed {seed}, row {row}",
            )


def test_transcribe_audio_equals_transcribe_log_mel_window_by_window(generator):
    seed = generator.initial_seed()
    recognizer = _recognizer(seed)
    windows = [torch.randn(n, generator=generator) * 0.1 for n in (16000, 4000, 35000, 159, 0, 8000, 23456)]
    got = recognizer.transcribe([w.numpy() for w in windows[:3]] + windows[3:])  # numpy and torch alike
    log_mel = LogMel(LogMelConfig())
    expected = [recognizer.transcribe_log_mel([log_mel(w[None])[0]])[0] for w in windows]
    assert got == expected, f"seed {seed}"
    assert got[3] == [] and got[4] == []  # shorter than one hop: no frames, no words
    assert sum(len(words) for words in got) > 0, f"seed {seed}: the test needs words to compare"
    assert all(w in recognizer.vocabulary.words for words in got for w in words)


def test_other_sample_rates_are_resampled_and_bad_input_is_named(generator):
    recognizer = _recognizer(generator.initial_seed())
    audio = np.sin(np.linspace(0, 2000, 16000)).astype(np.float32)
    import torchaudio

    at_8k = torchaudio.functional.resample(torch.from_numpy(audio), 16000, 8000)
    assert recognizer.transcribe([at_8k], sample_rate=8000) == recognizer.transcribe(
        [torchaudio.functional.resample(at_8k, 8000, 16000)]
    )
    with pytest.raises(ValueError, match="mono"):
        recognizer.transcribe([np.zeros((2, 100))])
    with pytest.raises(ValueError, match="NaN"):
        recognizer.transcribe([np.full(1000, np.nan)])
    with pytest.raises(ValueError, match=r"\(frames, 80\)"):
        recognizer.transcribe_log_mel([torch.zeros(10, 40)])
