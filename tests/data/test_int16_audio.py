"""int16 transport of 16-bit PCM audio: the same numbers as float32 reading, half the bytes.

Every comparison is exact: a 16-bit sample divided by 2**15 is a float32 exactly, and libsndfile's
float reading of PCM_16 is that division."""

import numpy as np
import pytest
import soundfile
import torch

from s2s.data.audio import AudioError, audio_as_float, load_audio
from s2s.data.batching import DialogueCollate, DurationBatchSampler, stack_padded
from s2s.data.dataset import DialogueDataset, TokenVocabularies
from s2s.data.tasks import say_in_german


def _random_pcm16(generator: torch.Generator, samples: int) -> np.ndarray:
    return (
        torch.randint(-32768, 32768, (samples, 2), generator=generator, dtype=torch.int32)
        .numpy()
        .astype(np.int16)
    )


def test_keep_pcm16_reads_the_file_samples_exactly(tmp_path, generator):
    seed = generator.initial_seed()
    pcm = _random_pcm16(generator, 5001)
    soundfile.write(tmp_path / "a.wav", pcm, 16000, subtype="PCM_16")
    as_float, _ = load_audio(tmp_path / "a.wav")
    as_int, rate = load_audio(tmp_path / "a.wav", keep_pcm16=True, start=7, frames=4000)
    assert rate == 16000 and as_int.dtype == torch.int16 and as_int.shape == (2, 4000), seed
    assert torch.equal(as_int, torch.from_numpy(pcm[7:4007].T.copy())), seed
    assert torch.equal(audio_as_float(as_int), as_float[:, 7:4007]), f"seed {seed}"
    assert torch.equal(audio_as_float(as_int).double(), torch.from_numpy(pcm[7:4007].T / 32768.0)), seed


def test_keep_pcm16_leaves_other_files_float_and_still_refuses_nan(tmp_path, generator):
    seed = generator.initial_seed()
    noise = torch.rand((3000, 2), generator=generator).numpy().astype(np.float32) - 0.5
    soundfile.write(tmp_path / "f.wav", noise, 16000, subtype="FLOAT")
    audio, _ = load_audio(tmp_path / "f.wav", keep_pcm16=True)
    assert audio.dtype == torch.float32 and torch.equal(audio, torch.from_numpy(noise.T.copy())), seed
    soundfile.write(
        tmp_path / "p24.wav", _random_pcm16(generator, 3000).astype(np.int32) << 16, 16000, subtype="PCM_24"
    )
    assert load_audio(tmp_path / "p24.wav", keep_pcm16=True)[0].dtype == torch.float32
    # resampled: float32 too (the int16 samples of another rate are no use)
    soundfile.write(tmp_path / "r.wav", _random_pcm16(generator, 2205), 22050, subtype="PCM_16")
    assert load_audio(tmp_path / "r.wav", 16000, keep_pcm16=True)[0].dtype == torch.float32
    noise[5, 0] = np.nan
    soundfile.write(tmp_path / "nan.wav", noise, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="1 NaN or infinite"):
        load_audio(tmp_path / "nan.wav", keep_pcm16=True)
    with pytest.raises(AudioError, match="float or int16"):
        audio_as_float(torch.zeros(4, dtype=torch.int32))


def test_int16_batches_give_the_float_batches_features_exactly(tiny_corpus):
    vocabularies = TokenVocabularies.from_task(say_in_german().describe())
    folder = tiny_corpus.out_dir / "train"
    as_float = DialogueDataset(folder, vocabularies=vocabularies)
    as_int = DialogueDataset(folder, vocabularies=vocabularies, int16_audio=True)
    sampler = DurationBatchSampler(as_float.lengths, 16000, batch_seconds=8.0, max_seconds=3.7, seed=5)
    collate = DialogueCollate(user_pitch=True)
    batches = 0
    crop_lists = []
    for epoch in range(3):  # a few epochs of the two-dialogue split: crops at several places
        sampler.set_epoch(epoch)
        crop_lists += list(sampler)
    for crops in crop_lists:
        reference = collate([as_float[c] for c in crops])
        batch = collate([as_int[c] for c in crops])
        assert batch.user_audio.dtype == torch.int16 and batch.system_audio.dtype == torch.int16
        assert torch.equal(audio_as_float(batch.user_audio), reference.user_audio)
        assert torch.equal(audio_as_float(batch.system_audio), reference.system_audio)
        for name in ("user_mel", "system_mel", "user_pitch", "user_speaking", "system_tokens", "user_words"):
            assert torch.equal(getattr(batch, name), getattr(reference, name)), name
        # an int16 item beside a float one: the batch is float32, the same numbers
        mixed = collate([as_int[crops[0]], *[as_float[c] for c in crops[1:]]])
        assert mixed.user_audio.dtype == torch.float32 and torch.equal(mixed.user_audio, reference.user_audio)
        batches += 1
    assert batches >= 3 and max(len(c) for c in crop_lists) >= 2


def test_stack_padded_writes_every_row_and_refuses_misfits(generator):
    seed = generator.initial_seed()
    lengths = torch.randint(1, 50, (5,), generator=generator).tolist()
    items = [torch.randint(0, 100, (n, 3), generator=generator) for n in lengths]
    out = stack_padded(items, 50, value=-7)
    assert out.shape == (5, 50, 3) and out.dtype == items[0].dtype, seed
    for row, item in enumerate(items):
        assert torch.equal(out[row, : len(item)], item), f"seed {seed} row {row}"
        assert (out[row, len(item) :] == -7).all(), f"seed {seed} row {row}"
    with pytest.raises(ValueError, match="does not fit a batch row"):
        stack_padded([torch.zeros(3), torch.zeros(9)], 8)
    with pytest.raises(ValueError, match="does not fit a batch row"):
        stack_padded([torch.zeros(3), torch.zeros(3, dtype=torch.int16)], 8)


def test_streaming_an_int16_dataset_gives_the_float_datasets_run(tiny_corpus):
    """The free-running validation streams the training data module's val split, which carries int16
    PCM: the runner turns it into the float samples the session takes, so the run is the same bit for
    bit (unscaled int16 would have streamed audio 32768 times too loud)."""
    from s2s.models.token_duplex import TokenDuplexConfig, TokenDuplexModel
    from s2s.streaming.runner import stream_dialogues

    torch.manual_seed(0)
    model = TokenDuplexModel(
        TokenDuplexConfig(dim=32, heads=2, kv_heads=2, encoder_layers=1, decoder_layers=1)
    )
    model.eval()
    folder = tiny_corpus.out_dir / "val"
    runs = [
        stream_dialogues(
            model, DialogueDataset(folder, int16_audio=flag), streams=2, max_seconds=4.0, vocoder=False
        )
        for flag in (False, True)
    ]
    assert len(runs[0].dialogues) == len(runs[1].dialogues) > 0
    for plain, pcm in zip(runs[0].dialogues, runs[1].dialogues, strict=True):
        assert pcm.user.dtype == np.float32 and np.array_equal(plain.user, pcm.user)
        assert np.array_equal(plain.reference, pcm.reference)
        assert np.array_equal(plain.mel, pcm.mel) and np.array_equal(plain.speaking, pcm.speaking), plain.name
        assert torch.equal(plain.feedback, pcm.feedback), plain.name


def test_the_runner_refuses_integer_audio():
    from s2s.streaming.runner import _stream_group

    with pytest.raises(TypeError, match="audio_as_float"):
        _stream_group(None, [torch.zeros(640, dtype=torch.int16)])
