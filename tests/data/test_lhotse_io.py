"""Lhotse export and import: the cuts are what NeMo's DuplexS2SDataset reads (the user's recording,
the system's as target_audio, turns as supervisions of "user" and "agent"); export -> import gives
back the same manifests, samples and task, and model v2 trains on the result; cuts made as NeMo's
documentation makes them (other rates, no word times) import with the roles right."""

import json

import lightning
import numpy as np
import pytest
import soundfile
import torch

lhotse = pytest.importorskip("lhotse")

from s2s.data.audio import load_audio  # noqa: E402
from s2s.data.corpus import CorpusError  # noqa: E402
from s2s.data.datamodule import DuplexDataModule  # noqa: E402
from s2s.data.lhotse_io import LhotseError, export_corpus, import_cuts, main  # noqa: E402
from s2s.data.manifest import load_manifest  # noqa: E402
from s2s.models.token_duplex import TokenDuplexConfig, TokenDuplexModel  # noqa: E402
from s2s.training.token_module import TokenDuplexLightningModule  # noqa: E402


def test_export_import_round_trip_gives_the_same_corpus(tiny_corpus, tmp_path):
    source = tiny_corpus.out_dir
    assert export_corpus(source, tmp_path / "cuts") == tiny_corpus.dialogues

    cuts = lhotse.CutSet.from_file(tmp_path / "cuts" / "val" / "cuts.jsonl.gz")
    cut = next(iter(cuts))
    original = load_manifest(source / "val" / f"{cut.id}.json")
    stereo, _ = load_audio(source / "val" / f"{cut.id}.wav")
    assert cut.recording.num_channels == 1 and cut.target_audio.num_channels == 1
    assert np.array_equal(cut.load_audio()[0], stereo[0].numpy())  # the recording is the user
    assert np.array_equal(cut.load_target_audio()[0], stereo[1].numpy())  # target_audio the system
    replies = [s for s in cut.supervisions if s.speaker == "agent"]
    assert [s.text for s in replies] == [
        " ".join(w.text for w in s.words) for s in original.speech("system")
    ]  # what was said (a cut-off reply's said words), as NeMo tokenizes it
    assert {s.speaker for s in cut.supervisions} == {"user", "agent"}

    main(["import", str(tmp_path / "cuts"), str(tmp_path / "back")])
    for split in ("train", "val", "test"):
        for wav in sorted((source / split).glob("*.wav")):
            assert load_manifest(tmp_path / "back" / split / wav.with_suffix(".json").name) == load_manifest(
                wav.with_suffix(".json")
            )
            back, rate = load_audio(tmp_path / "back" / split / wav.name)
            want, want_rate = load_audio(wav)
            assert rate == want_rate and torch.equal(back, want)
    record = json.loads((tmp_path / "back" / "corpus.json").read_text())
    assert record["recipe"]["task"] == json.loads((source / "corpus.json").read_text())["recipe"]["task"]
    assert record["channels"] == ["user", "system"]
    with pytest.raises(CorpusError, match=r"already holds"):
        import_cuts(tmp_path / "cuts", tmp_path / "back")

    # model v2 trains on the imported corpus, a few steps
    data = DuplexDataModule(
        root=tmp_path / "back", num_workers=0, max_seconds=4.0, eval_max_seconds=4.0, batch_seconds=8.0,
        generate_if_missing=False, token_targets=True,
    )  # fmt: skip
    data.setup("fit")
    vocab = data.datasets["train"].vocabularies
    config = TokenDuplexConfig(
        dim=32, heads=2, kv_heads=2, encoder_layers=1, decoder_layers=1, chunk=4,
        system_vocab=vocab.system.size, user_vocab=vocab.user.size,
    )  # fmt: skip
    trainer = lightning.Trainer(
        max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        limit_val_batches=0, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(TokenDuplexLightningModule(TokenDuplexModel(config)), datamodule=data)
    assert trainer.global_step == 2


def test_cuts_as_nemo_documents_them_import_with_the_roles_right(tmp_path, generator):
    """NeMo's example: the user at 16 kHz, the assistant at 22.05 kHz, turns without word times."""
    user = 0.1 * torch.randn(1, 32000, generator=generator)
    user[:, 16000:] = 0
    system = torch.zeros(1, 44100)
    system[:, 24255:] = 0.1 * torch.randn(1, 44100 - 24255, generator=generator)
    (tmp_path / "nemo").mkdir()
    paths = {}
    for name, audio, rate in (("user", user, 16000), ("assistant", system, 22050)):
        paths[name] = tmp_path / "nemo" / f"c1_{name}.wav"
        soundfile.write(paths[name], audio[0].numpy(), rate, subtype="FLOAT")
    recording = lhotse.Recording.from_file(paths["user"], recording_id="c1_user")
    cut = recording.to_cut()
    cut.supervisions = [
        lhotse.SupervisionSegment(
            "c1-0", "c1_user", start=0.0, duration=1.0, text="how are you", speaker="user"
        ),
        lhotse.SupervisionSegment(
            "c1-1", "c1_user", start=1.1, duration=0.9, text="fine thanks", speaker="assistant"
        ),
    ]
    cut.target_audio = lhotse.Recording.from_file(paths["assistant"], recording_id="c1_assistant")
    (tmp_path / "cuts" / "train").mkdir(parents=True)
    lhotse.CutSet.from_cuts([cut]).to_file(tmp_path / "cuts" / "train" / "cuts.jsonl.gz")

    assert import_cuts(tmp_path / "cuts", tmp_path / "s2s") == {"train": 1}
    manifest = load_manifest(tmp_path / "s2s" / "train" / "c1_user.json")
    assert [(s.speaker, s.kind, s.text, s.start_sample, s.end_sample) for s in manifest.segments] == [
        ("user", "turn", "how are you", 0, 16000),
        ("system", "reply", "fine thanks", 17600, 32000),
    ]
    assert not manifest.has_word_times and manifest.sample_rate == 16000
    audio, _ = load_audio(tmp_path / "s2s" / "train" / "c1_user.wav")
    assert torch.equal(audio[0], user[0])  # channel 0 is the user, samples unchanged
    assert audio[1, :17000].abs().max() < 1e-3 and audio[1, 18000:].abs().mean() > 0.05  # resampled system
    task = json.loads((tmp_path / "s2s" / "corpus.json").read_text())["recipe"]["task"]
    assert (task["user_words"], task["system_words"]) == (["how", "are", "you"], ["fine", "thanks"])

    cut.supervisions[1].speaker = "narrator"
    (tmp_path / "odd" / "train").mkdir(parents=True)
    lhotse.CutSet.from_cuts([cut]).to_file(tmp_path / "odd" / "train" / "cuts.jsonl.gz")
    with pytest.raises(LhotseError, match=r"speakers \['narrator'\].*input_roles and output_roles"):
        import_cuts(tmp_path / "odd", tmp_path / "odd_s2s")
    with pytest.raises(LhotseError, match=r"no \{train,val,test\}/cuts\.jsonl\.gz under"):
        import_cuts(tmp_path / "nemo", tmp_path / "none")
