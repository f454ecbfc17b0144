"""Dataset, duration batching and the data module: shapes, masks, determinism and bad-input errors."""

import json
import shutil
import warnings

import numpy as np
import pytest
import soundfile
import torch

from s2s.data.audio import AudioError
from s2s.data.batching import DialogueCollate, DurationBatchSampler
from s2s.data.datamodule import DuplexDataModule
from s2s.data.dataset import Crop, DialogueDataset
from s2s.data.features import LogMel
from s2s.data.manifest import ManifestError


def _all_batches(loader):
    return [batch for batch in loader]


def test_sampler_packs_by_duration_and_covers_every_dialogue_once():
    rng = np.random.default_rng()
    lengths = [int(n) * 160 for n in rng.integers(50, 4000, size=57)]
    sampler = DurationBatchSampler(
        lengths, 16000, batch_seconds=12.0, max_seconds=6.0, seed=int(rng.integers(1000))
    )
    batches = sampler.batches()
    assert sorted(c.index for b in batches for c in b) == list(range(57))
    for batch in batches:
        assert len(batch) * max(c.length for c in batch) <= 12 * 16000
        for crop in batch:
            assert crop.length == min(lengths[crop.index], 6 * 16000) and crop.length % 160 == 0
            assert crop.start % 160 == 0 and 0 <= crop.start <= lengths[crop.index] - crop.length
    again = DurationBatchSampler(lengths, 16000, batch_seconds=12.0, max_seconds=6.0, seed=sampler.seed)
    assert again.batches() == batches
    again.set_epoch(1)
    assert again.batches() != batches
    ranks = [
        DurationBatchSampler(lengths, 16000, 12.0, 6.0, seed=sampler.seed, rank=r, world_size=3).batches()
        for r in range(3)
    ]
    shards = [
        list(DurationBatchSampler(lengths, 16000, 12.0, 6.0, seed=sampler.seed, rank=r, world_size=3))
        for r in range(3)
    ]
    assert ranks[0] == batches and len({len(s) for s in shards}) == 1
    assert len({c.index for s in shards for b in s for c in b}) == sum(len(b) for s in shards for b in s)


def test_sampler_crops_on_the_chunk_grid_with_a_length_multiple():
    """Every crop a whole multiple of the given samples (a dialogue shorter than one stays whole),
    inside its dialogue, starting on a hop; without the multiple the crops are the plain ones."""
    seed = int(np.random.default_rng().integers(1_000_000))
    rng = np.random.default_rng(seed)  # the lengths too: a failure reproduces from its seed
    # from one 160-sample frame up: the sampler refuses shorter dialogues (a test of its own)
    lengths = [int(n) for n in rng.integers(160, 9 * 16000, size=80)] + [3000, 5120, 16000 * 7]
    multiple = 5120  # 8 model frames of 640 samples
    aligned = DurationBatchSampler(lengths, 16000, 24.0, 6.1, seed=seed, length_multiple=multiple)
    plain = DurationBatchSampler(lengths, 16000, 24.0, 6.1, seed=seed)
    crops = [c for b in aligned.batches() for c in b]
    assert sorted(c.index for c in crops) == list(range(len(lengths))), f"seed {seed}"
    assert aligned.max_samples == 6.1 * 16000 // multiple * multiple, f"seed {seed}"
    for crop in crops:
        n = lengths[crop.index]
        where = f"seed {seed}: crop {crop} of a {n}-sample dialogue"
        if n < multiple:
            assert (crop.start, crop.length) == (0, n), where
        else:
            assert crop.length == min(n, aligned.max_samples) // multiple * multiple, where
        assert crop.start % 160 == 0 and 0 <= crop.start <= n - crop.length, where
    for crop in (c for b in plain.batches() for c in b):
        assert crop.length == min(lengths[crop.index], plain.max_samples), f"seed {seed}: {crop}"
    for bad in (0, -640, 2.5, True):
        with pytest.raises(ValueError, match="length_multiple must be a positive number of samples"):
            DurationBatchSampler(lengths, 16000, 24.0, 6.1, length_multiple=bad)


def test_sampler_refuses_dialogues_shorter_than_a_frame():
    with pytest.raises(ValueError, match=r"dialogue\(s\) \[1\] are shorter than one 160-sample frame"):
        DurationBatchSampler([16000, 159, 160], 16000, batch_seconds=10.0, max_seconds=5.0)


def test_sampler_rejects_crops_larger_than_a_batch():
    with pytest.raises(ValueError, match="longer than batch_seconds"):
        DurationBatchSampler([16000 * 30], 16000, batch_seconds=10.0, max_seconds=20.0)


def test_batches_have_the_promised_shapes_masks_and_labels(tiny_corpus):
    dataset = DialogueDataset(tiny_corpus.out_dir / "train")
    sampler = DurationBatchSampler(dataset.lengths, 16000, batch_seconds=20.0, max_seconds=7.3, seed=3)
    collate = DialogueCollate()
    front_end = LogMel()
    seen = 0
    for crops in sampler:
        batch = collate([dataset[c] for c in crops])
        B = len(crops)
        T = batch.user_audio.shape[1]
        F = T // 160
        assert T % 640 == 0 and max(c.length for c in crops) <= T
        assert batch.system_audio.shape == (B, T) and batch.user_mel.shape == (B, F, 80)
        assert batch.system_mel.shape == (B, F, 80) and batch.system_speaking.shape == (B, F)
        assert torch.equal(batch.audio_lengths, torch.tensor([c.length for c in crops]))
        assert torch.equal(batch.frame_lengths, batch.audio_lengths // 160)
        for row, crop in enumerate(crops):
            frames = crop.length // 160
            assert batch.frame_mask[row, :frames].all() and not batch.frame_mask[row, frames:].any()
            assert (
                not batch.user_audio[row, crop.length :].any()
                and not batch.system_speaking[row, frames:].any()
            )
            # the audio is the crop of the file, and the features are those of that audio alone
            whole, _ = soundfile.read(dataset.files[crop.index].audio_path, dtype="float32", always_2d=True)
            np.testing.assert_array_equal(
                batch.user_audio[row, : crop.length].numpy(), whole[crop.start : crop.start + crop.length, 0]
            )
            alone = front_end(batch.system_audio[row : row + 1, : crop.length])
            torch.testing.assert_close(batch.system_mel[row : row + 1, :frames], alone, atol=1e-5, rtol=0)
            # labels follow the manifest: a speaking frame has system sound in it, a silent one none
            audio = batch.system_audio[row, : frames * 160].reshape(frames, 160)
            speaking = batch.system_speaking[row, :frames].bool()
            assert (audio[~speaking].abs().amax(dim=1) < 0.05).float().mean() > 0.97
            assert (audio[speaking].abs().amax(dim=1) > 0.0).all()
            seen += 1
    assert seen == len(dataset)


def test_loader_workers_do_not_change_batches(tiny_corpus):
    def loader(workers):
        module = DuplexDataModule(
            root=tiny_corpus.out_dir,
            max_seconds=5.0,
            batch_seconds=12.0,
            num_workers=workers,
            seed=11,
            generate_if_missing=False,
        )
        module.setup("fit")
        return module.train_dataloader()

    single, parallel = _all_batches(loader(0)), _all_batches(loader(2))
    assert [b.names for b in single] == [b.names for b in parallel]
    for a, b in zip(single, parallel, strict=True):
        assert torch.equal(a.user_audio, b.user_audio) and torch.equal(a.system_mel, b.system_mel)


def test_training_crops_on_the_chunk_grid_reach_the_model_frames(tiny_corpus):
    """data.crop_multiple_frames: every training item's model frames a multiple of N (what lets
    attention skip packing); validation keeps whole dialogues; a bad value is refused by name."""
    module = DuplexDataModule(
        root=tiny_corpus.out_dir, max_seconds=5.0, batch_seconds=12.0, num_workers=0, seed=5,
        generate_if_missing=False, crop_multiple_frames=8, eval_max_seconds=None,
    )  # fmt: skip
    module.setup("fit")
    frames = [int(n) // 640 for b in _all_batches(module.train_dataloader()) for n in b.audio_lengths]
    assert frames and all(f % 8 == 0 for f in frames), frames
    assert all(int(n) % 640 == 0 for b in _all_batches(module.train_dataloader()) for n in b.audio_lengths)
    val = sorted(int(n) for b in _all_batches(module.val_dataloader()) for n in b.audio_lengths)
    assert val == sorted(module.datasets["val"].lengths)
    for bad in (0, -8, 2.0):
        with pytest.raises(ValueError, match="crop_multiple_frames"):
            DuplexDataModule(root=tiny_corpus.out_dir, crop_multiple_frames=bad, generate_if_missing=False)


def test_static_batches_hold_a_fixed_count_in_random_order():
    """static_batch: batch_seconds // max_seconds crops a batch, every dialogue at most once, the
    smaller last group dropped in training and kept in evaluation."""
    rng = np.random.default_rng()
    seed = int(rng.integers(1_000_000))
    lengths = [int(n) for n in rng.integers(16000, 9 * 16000, size=47)]
    train = DurationBatchSampler(lengths, 16000, 20.0, 6.0, seed=seed, static_batch=True)
    batches = train.batches()
    assert train.static_size == 3 and len(batches) == 15, f"seed {seed}"
    assert all(len(b) == 3 for b in batches), f"seed {seed}"
    indices = [c.index for b in batches for c in b]
    assert len(set(indices)) == 45 and indices != sorted(indices), f"seed {seed}"
    evaluation = DurationBatchSampler(lengths, 16000, 20.0, 6.0, shuffle=False, static_batch=True)
    assert [len(b) for b in evaluation.batches()] == [3] * 15 + [2]
    with pytest.raises(ValueError, match="static_shapes"):
        DurationBatchSampler(lengths, 16000, 8.0, None, static_batch=True)


def test_static_shapes_give_every_training_batch_one_shape(tiny_corpus):
    """data.static_shapes: every training batch padded to max_seconds, crops on the chunk grid."""
    seed = int(np.random.default_rng().integers(1_000_000))
    dialogues = len(DialogueDataset(tiny_corpus.out_dir / "train"))
    module = DuplexDataModule(
        root=tiny_corpus.out_dir, max_seconds=2.56, batch_seconds=2.56 * dialogues, num_workers=0,
        seed=seed, generate_if_missing=False, crop_multiple_frames=8, static_shapes=True,
    )  # fmt: skip
    module.setup("fit")
    for _ in range(2):
        batches = _all_batches(module.train_dataloader())
        shapes = {(tuple(b.user_audio.shape), tuple(b.system_speaking.shape)) for b in batches}
        assert shapes == {((dialogues, 40960), (dialogues, 256))}, f"seed {seed}: {shapes}"
        for b in batches:
            assert (b.audio_lengths <= 40960).all() and (b.audio_lengths % 5120 == 0).all(), f"seed {seed}"
    with pytest.raises(ValueError, match="pad_to"):
        DialogueCollate(pad_to=1000)


def test_validation_batches_are_whole_dialogues_from_the_start(tiny_corpus):
    module = DuplexDataModule(
        root=tiny_corpus.out_dir, eval_max_seconds=None, num_workers=0, generate_if_missing=False
    )
    module.setup("validate")
    batches = _all_batches(module.val_dataloader())
    lengths = module.datasets["val"].lengths
    assert sorted(int(n) for b in batches for n in b.audio_lengths) == sorted(lengths)


def test_data_module_generates_the_corpus_on_first_use(tmp_path):
    root = tmp_path / "fresh"
    corpus = {"hours": {"train": 0.005, "val": 0.005, "test": 0.0}, "timing": {"seconds": [20.0, 21.0]}}
    module = DuplexDataModule(root=root, corpus=corpus, num_workers=0, max_seconds=4.0, batch_seconds=8.0)
    module.prepare_data()
    assert len(list((root / "train").glob("*.wav"))) == 1 and len(list((root / "val").glob("*.wav"))) == 1
    stamp = (root / "train" / "train_00000.wav").stat().st_mtime_ns
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same recipe: no warning
        module.prepare_data()  # already there: nothing is made again
    assert (root / "train" / "train_00000.wav").stat().st_mtime_ns == stamp
    # another recipe (more pauses in train) over a complete corpus: trained on as it is, and said so
    changed = {**corpus, "split_timing": {"train": {"pause_probability": 0.6}}}
    other = DuplexDataModule(root=root, corpus=changed, num_workers=0, max_seconds=4.0, batch_seconds=8.0)
    with pytest.warns(UserWarning, match=r"other settings .*differences in: config\.split_timing\)"):
        other.prepare_data()
    assert (root / "train" / "train_00000.wav").stat().st_mtime_ns == stamp
    more = {**corpus, "hours": {"train": 0.01, "val": 0.005, "test": 0.0}}  # hours are not the recipe
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DuplexDataModule(root=root, corpus=more, num_workers=0).prepare_data()
    module.setup("fit")
    batch = next(iter(module.train_dataloader()))
    assert batch.user_audio.shape == (1, 4 * 16000)


def test_real_recordings_without_manifests_at_another_rate(tmp_path, generator):
    """A folder of stereo 22.05 kHz wav with no manifests: resampled, speaking flags from energy."""
    folder = tmp_path / "train"
    folder.mkdir()
    rate = 22050
    audio = np.zeros((rate * 2, 2), dtype=np.float32)
    audio[rate // 2 : rate, 0] = 0.3 * torch.randn(rate // 2, generator=generator).numpy()  # user 0.5-1.0 s
    audio[rate + rate // 4 :, 1] = (
        0.3 * torch.randn(rate - rate // 4, generator=generator).numpy()
    )  # system 1.25-2 s
    soundfile.write(folder / "call.wav", audio, rate)
    dataset = DialogueDataset(folder, channels={"user": 0, "system": 1})  # a bare wav does not say
    assert dataset.lengths == [32000]
    item = dataset[0]
    assert item["user"].shape == (32000,)
    user, system = item["user_speaking"], item["system_speaking"]
    assert user[52:98].all() and not user[:48].any() and not user[102:].any()
    assert system[127:].all() and not system[:123].any()
    part = dataset[Crop(0, 8000, 1600)]
    torch.testing.assert_close(part["user"], item["user"][8000:9600], atol=1e-4, rtol=0)


def test_bad_folders_and_files_get_clear_errors(tmp_path, tiny_corpus):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        DialogueDataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no \.wav or \.flac dialogues.*make_data"):
        DialogueDataset(tmp_path / "empty")
    mono = tmp_path / "mono"
    mono.mkdir()
    soundfile.write(mono / "a.wav", np.zeros(1600), 16000)
    with pytest.raises(AudioError, match="must be stereo"):
        DialogueDataset(mono)
    mixed = tmp_path / "mixed"
    shutil.copytree(tiny_corpus.out_dir / "val", mixed)
    wav = sorted(mixed.glob("*.wav"))[0]
    soundfile.write(wav, np.zeros((1600, 2)), 16000)  # the manifest now describes another file
    with pytest.raises(ManifestError, match="belongs to another file"):
        DialogueDataset(mixed)
    wav.with_suffix(".json").write_text("{ truncated")
    with pytest.raises(ManifestError, match="not valid JSON"):
        DialogueDataset(mixed)
    record = json.loads((tiny_corpus.out_dir / "val" / wav.with_suffix(".json").name).read_text())
    del record["segments"]
    wav.with_suffix(".json").write_text(json.dumps(record))
    with pytest.raises(ManifestError, match="malformed"):
        DialogueDataset(mixed)
    dataset = DialogueDataset(tiny_corpus.out_dir / "val")
    with pytest.raises(IndexError, match="outside"):
        dataset[Crop(0, dataset.lengths[0] - 100, 200)]


def test_collate_adds_the_user_pitch_only_when_asked(tiny_corpus):
    from s2s.data.pitch import pitch_features

    dataset = DialogueDataset(tiny_corpus.out_dir / "train")
    items = [dataset[Crop(i, 0, min(dataset.lengths[i], 16000 * 3) // 160 * 160)] for i in range(2)]
    plain, with_pitch = DialogueCollate()(items), DialogueCollate(user_pitch=True)(items)
    assert plain.user_pitch is None
    assert torch.equal(with_pitch.user_mel, plain.user_mel) and torch.equal(
        with_pitch.user_audio, plain.user_audio
    )
    assert with_pitch.user_pitch.shape == (*plain.user_mel.shape[:2], 2)
    assert torch.equal(with_pitch.user_pitch, pitch_features(plain.user_audio))
    assert (with_pitch.user_pitch[..., 0] > 0.5).any(), "the user's speech has voiced frames"


def test_features_on_the_device_equal_the_workers_features(tiny_corpus):
    """features_on="device": the loader's batches leave without features and the data module's
    on_after_batch_transfer hook adds them where the batch is (here the CPU): the same numbers as
    the workers' (log-mel of both channels and the user's pitch track), every frame."""

    def loader(features_on):
        module = DuplexDataModule(
            root=tiny_corpus.out_dir, max_seconds=5.0, batch_seconds=12.0, num_workers=0, seed=3,
            generate_if_missing=False, user_pitch=True, features_on=features_on,
        )  # fmt: skip
        module.setup("fit")
        return module, module.train_dataloader()

    _, workers = loader("workers")
    module, device = loader("device")
    for made, bare in zip(workers, device, strict=True):
        assert bare.user_mel is None and bare.system_mel is None and bare.user_pitch is None
        filled = module.on_after_batch_transfer(bare, 0)
        for name in ("user_mel", "system_mel", "user_pitch"):
            expected, got = getattr(made, name), getattr(filled, name)
            assert got.shape == expected.shape and torch.isfinite(got).all(), name
            assert torch.equal(got, expected), (name, (got - expected).abs().max().item())


def test_an_unknown_features_place_is_refused():
    with pytest.raises(ValueError, match=r"features_on='gpu'.*'workers'.*'device'"):
        DuplexDataModule(root="nowhere", features_on="gpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_features_on_a_gpu_match_the_cpu_features(generator):
    """The GPU path (every window's autocorrelation, no host round trip) against the CPU features of
    the same speech-like audio: log-mel within float32 FFT rounding; the pitch track's voicing
    decisions may flip on a knife-edge frame, so at most 0.5% of frames may differ."""
    from s2s.data.batch_features import BatchFeatures
    from s2s.data.batching import DialogueBatch

    seed = int(torch.randint(2**31, (1,), generator=generator))
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(16000 * 6) / 16000
    f0 = 110 + 60 * torch.rand(3, 1, generator=g)
    audio = 0.3 * torch.sin(2 * torch.pi * f0 * t * (1 + 0.1 * torch.sin(t)))
    audio = audio * (torch.rand(3, 60, generator=g) > 0.3).float().repeat_interleave(1600, dim=1)
    audio = audio + 0.01 * torch.randn(audio.shape, generator=g)

    def batch(device):
        frames = audio.shape[1] // 160
        return DialogueBatch(
            names=["a", "b", "c"], user_audio=audio.to(device), system_audio=audio.flip(0).to(device),
            audio_lengths=torch.full((3,), audio.shape[1]), frame_lengths=torch.full((3,), frames),
            frame_mask=torch.ones(3, frames, dtype=torch.bool), user_speaking=torch.zeros(3, frames),
            system_speaking=torch.zeros(3, frames),
        )  # fmt: skip

    features = BatchFeatures(user_pitch=True)
    on_cpu, on_gpu = features(batch("cpu")), features(batch("cuda"))
    for name in ("user_mel", "system_mel"):
        got = getattr(on_gpu, name).cpu()
        assert torch.isfinite(got).all(), (seed, name)
        torch.testing.assert_close(
            got, getattr(on_cpu, name), atol=2e-3, rtol=1e-4, msg=lambda m: f"seed {seed}: {m}"
        )
    pitch_gpu, pitch_cpu = on_gpu.user_pitch.cpu(), on_cpu.user_pitch
    assert pitch_gpu.shape == pitch_cpu.shape and torch.isfinite(pitch_gpu).all(), seed
    differ = ((pitch_gpu - pitch_cpu).abs() > 1e-3).any(dim=-1).float().mean().item()
    assert differ <= 0.005, (seed, differ)
    assert (pitch_cpu[..., 0] > 0.5).float().mean() > 0.3, f"seed {seed}: the audio is not voiced"
