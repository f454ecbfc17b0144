"""Augmentation and training crops: smoothing against numpy, the vocoder's silence, jitter keeps the reply."""

import numpy as np
import torch

from s2s.data.features import LogMel, LogMelConfig
from s2s.models.vocoder import GriffinLimVocoder
from s2s.recognizer.augment import OnlineAugment, round_trip, smooth_time
from s2s.recognizer.data import Jitter, WindowDataset, collate
from s2s.recognizer.features import WindowFeatures
from s2s.recognizer.vocabulary import Vocabulary


def _moving_average(x: np.ndarray, k: int) -> np.ndarray:
    left = (k - 1) // 2
    padded = np.concatenate([np.repeat(x[:1], left, 0), x, np.repeat(x[-1:], k - 1 - left, 0)])
    return np.stack([padded[t : t + k].mean(0) for t in range(x.shape[0])])


def test_smoothing_is_a_centred_moving_average(generator):
    seed = generator.initial_seed()
    mel = torch.randn(2, 37, 80, generator=generator, dtype=torch.float64)
    for k in (1, 2, 3, 5):
        got = smooth_time(mel, k).numpy()
        for b in range(2):
            np.testing.assert_allclose(
                got[b], _moving_average(mel[b].numpy(), k), atol=1e-12, err_msg=f"seed {seed}"
            )


def test_round_trip_keeps_frames_and_digital_silence(generator):
    seed = generator.initial_seed()
    config = LogMelConfig()
    front, vocoder = LogMel(config), GriffinLimVocoder(config, iterations=4)
    audio = torch.zeros(1, 12000)
    audio[0, 3000:7000] = 0.1 * torch.randn(4000, generator=generator)
    mel = front(audio)
    for stream in (None, 16):
        out = round_trip(mel, vocoder, front, stream_frames=stream)
        assert out.shape == mel.shape
        # silence before the speech (and after the vocoder's reach) is reproduced exactly
        torch.testing.assert_close(out[0, :15], mel[0, :15], rtol=0, atol=0, msg=f"seed {seed}")
        torch.testing.assert_close(out[0, 60:], mel[0, 60:], rtol=0, atol=0, msg=f"seed {seed}")
        assert (out[0, 20:40] - mel[0, 20:40]).abs().mean() > 0.1  # the speech itself did change


def _features(generator) -> WindowFeatures:
    features = WindowFeatures()
    for i in range(20):
        frames = int(torch.randint(150, 300, (), generator=generator))
        start = int(torch.randint(0, 31, (), generator=generator))
        onset = start + int(torch.randint(5, 40, (), generator=generator))
        offset = onset + int(torch.randint(30, 80, (), generator=generator))
        end = min(frames, offset + int(torch.randint(5, 80, (), generator=generator)))
        mel = torch.full((frames, 80), -13.8)
        mel[onset:offset] = torch.arange(onset, offset, dtype=torch.float32)[:, None]  # frame numbers
        features.mels.append(mel.half())
        features.variants.append("reference")
        features.words.append(("eins", "zwei")[: 1 + i % 2])
        features.kinds.append("reply")
        features.dialogues.append("d")
        features.exchanges.append(i)
        features.windows.append((start, end))
        features.replies.append((onset, offset))
    return features


def test_jittered_crops_always_hold_the_whole_reply(generator):
    seed = generator.initial_seed()
    features = _features(generator)
    data = WindowDataset(features, Vocabulary(("eins", "zwei")), Jitter(start=15, end=30, keep=3), seed=seed)
    lengths = set()
    for _ in range(10):
        for i in range(len(data)):
            mel, target = data[i]
            onset, offset = features.replies[i]
            speech = mel[:, 0][mel[:, 0] > -13]
            assert speech.tolist() == list(range(onset, offset)), f"seed {seed}, window {i}"
            assert target.tolist() == [1, 2][: 1 + i % 2]
            lengths.add(mel.shape[0])
    assert len(lengths) > 20, "jitter should move the edges"
    plain = WindowDataset(features, Vocabulary(("eins", "zwei")))
    for i in range(len(plain)):
        assert plain[i][0].shape[0] == features.windows[i][1] - features.windows[i][0]


def test_online_augment_is_seeded_and_collate_pads(generator):
    seed = generator.initial_seed()
    mel = torch.randn(100, 80, generator=generator)
    augment = OnlineAugment(probability=1.0)
    a = augment(mel, torch.Generator().manual_seed(seed))
    b = augment(mel, torch.Generator().manual_seed(seed))
    assert torch.equal(a, b) and a.shape == mel.shape and not torch.equal(a, mel), f"seed {seed}"
    batch = collate([(torch.ones(5, 80), torch.tensor([1, 2])), (torch.ones(3, 80), torch.tensor([2]))])
    assert batch["mel"].shape == (2, 5, 80) and batch["mel"][1, 3:].abs().sum() == 0
    assert batch["lengths"].tolist() == [5, 3] and batch["targets"].tolist() == [1, 2, 2]
    assert batch["target_lengths"].tolist() == [2, 1]
