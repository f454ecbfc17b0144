"""moshi-finetune's layout -> an s2s corpus: the user (moshi's right channel) lands on channel 0 with
its samples unchanged, the words become segments with their times, corpus.json names the roles and
the words, and model v2 trains on the result for a few steps with the roles right."""

import json
import shutil

import lightning
import numpy as np
import pytest
import soundfile
import torch
from moshi_folder import RATE, WORDS, make_moshi_folder

from s2s.data.audio import AudioError
from s2s.data.corpus import CorpusError
from s2s.data.datamodule import DuplexDataModule
from s2s.data.manifest import ManifestError, load_manifest
from s2s.data.moshi_layout import MoshiLayoutError, convert, main
from s2s.models.token_duplex import TokenDuplexConfig, TokenDuplexModel
from s2s.training.token_module import TokenDuplexLightningModule


def test_a_moshi_folder_converts_with_the_roles_swapped_into_s2s_order(tmp_path):
    jsonl = make_moshi_folder(tmp_path / "moshi")
    summary = convert(jsonl, tmp_path / "s2s", split="train")
    assert (summary.dialogues, summary.words, summary.dropped_words) == (
        2,
        18,
        2,
    )  # 9 words and 1 dropped per dialogue

    original, _ = soundfile.read(tmp_path / "moshi" / "data_stereo" / "call_0.wav", dtype="float32")
    written, rate = soundfile.read(tmp_path / "s2s" / "train" / "data_stereo-call_0.wav", dtype="float32")
    assert (
        rate == RATE
        and soundfile.info(tmp_path / "s2s" / "train" / "data_stereo-call_0.wav").subtype == "PCM_16"
    )
    assert np.array_equal(written[:, 0], original[:, 1]) and np.array_equal(written[:, 1], original[:, 0])

    manifest = load_manifest(tmp_path / "s2s" / "train" / "data_stereo-call_0.json")
    turns = [(s.speaker, s.kind, s.text, s.exchange) for s in manifest.segments]
    assert turns == [
        ("user", "turn", "what's the time?", 0),
        ("system", "reply", "It's three o'clock.", 0),
        ("user", "turn", "thanks", 1),
        ("system", "reply", "You're welcome", 1),
    ]
    reply = manifest.segments[3]
    assert [(w.text, w.start_sample, w.end_sample) for w in reply.words] == [
        ("You're", round(4.20 * RATE), round(4.50 * RATE)),
        ("welcome", round(4.50 * RATE), round(5.00 * RATE)),  # starts where the word before ends
    ]
    assert manifest.segments[0].start_sample == round(0.30 * RATE)
    assert manifest.segments[0].end_sample == round(1.20 * RATE)

    record = json.loads((tmp_path / "s2s" / "corpus.json").read_text())
    assert record["channels"] == ["user", "system"]
    task = record["recipe"]["task"]
    assert task["system_words"] == ["It's", "three", "o'clock.", "You're", "welcome"]
    assert task["user_words"] == ["what's", "the", "time?", "thanks"]

    # a second split extends the record; its new words go to the end (the first split's ids stay)
    extra = tmp_path / "extra"
    shutil.copytree(tmp_path / "moshi", extra)
    words = [*WORDS, ["again", 5.2, 5.6, "SPEAKER_OTHER"]]
    for n in range(2):
        (extra / "data_stereo" / f"call_{n}.json").write_text(
            json.dumps({"alignments": [[w, [s, e], p] for w, s, e, p in words]})
        )
    main([str(extra / "data_stereo"), str(tmp_path / "s2s"), "--split", "val"])
    record = json.loads((tmp_path / "s2s" / "corpus.json").read_text())
    assert record["recipe"]["task"]["user_words"] == ["what's", "the", "time?", "thanks", "again"]
    assert set(record["splits"]) == {"train", "val"} and set(record["recipe"]["imported"]) == {"train", "val"}
    with pytest.raises(CorpusError, match=r"already holds 4 file\(s\).*empty split"):
        convert(jsonl, tmp_path / "s2s", split="train")


def test_the_converted_corpus_trains_model_v2_with_the_user_as_the_user(tmp_path):
    jsonl = make_moshi_folder(tmp_path / "moshi")
    for split in ("train", "val"):
        convert(jsonl, tmp_path / "s2s", split=split)
    data = DuplexDataModule(
        root=tmp_path / "s2s", num_workers=0, max_seconds=4.0, eval_max_seconds=4.0, batch_seconds=8.0,
        generate_if_missing=False, token_targets=True,
    )  # fmt: skip
    data.setup("fit")
    dataset = data.datasets["train"]
    item = dataset[0]  # at 16 kHz, 10 ms frames: the user (moshi's right channel) speaks 0.3-1.2 s
    user_rms = item["user"][: 160 * 600].reshape(600, 160).pow(2).mean(1).sqrt()
    assert user_rms[35:115].min() > 0.05 and user_rms[130:330].max() < 1e-3  # silent while moshi speaks
    assert item["user_speaking"][30:120].all() and not item["user_speaking"][160:330].any()
    assert item["system_speaking"][160:290].all() and not item["system_speaking"][:150].any()

    vocab = dataset.vocabularies
    config = TokenDuplexConfig(
        dim=32, heads=2, kv_heads=2, encoder_layers=1, decoder_layers=1, chunk=4,
        system_vocab=vocab.system.size, user_vocab=vocab.user.size,
    )  # fmt: skip
    module = TokenDuplexLightningModule(TokenDuplexModel(config))
    before = [p.detach().clone() for p in module.parameters()]
    trainer = lightning.Trainer(
        max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        limit_val_batches=0, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 3
    assert any(not torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))


def test_bad_moshi_files_are_named_with_the_fix(tmp_path):
    make_moshi_folder(tmp_path / "moshi", dialogues=1)
    folder = tmp_path / "moshi" / "data_stereo"
    system_only = [[w, [s, e], p] for w, s, e, p in WORDS if p == "SPEAKER_MAIN"]
    (folder / "call_0.json").write_text(json.dumps({"alignments": system_only}))
    with pytest.raises(MoshiLayoutError, match=r"no words of the user .*transcribe the right channel"):
        convert(folder, tmp_path / "a")
    (folder / "call_0.json").write_text(json.dumps({"alignments": [["hi", 0.5, "SPEAKER_MAIN"]]}))
    with pytest.raises(MoshiLayoutError, match=r"alignments\[0\] is \['hi', 0\.5, 'SPEAKER_MAIN'\]"):
        convert(folder, tmp_path / "b")
    (folder / "call_0.json").write_text(json.dumps([1, 2]))
    with pytest.raises(MoshiLayoutError, match=r'no "alignments" list'):
        convert(folder, tmp_path / "c")
    with pytest.raises(ManifestError, match=r"moshi-finetune's word timestamps.*s2s\.data\.moshi_layout"):
        (folder / "call_0.json").write_text(json.dumps({"alignments": []}))
        load_manifest(folder / "call_0.json")
    (folder / "call_0.json").unlink()
    with pytest.raises(MoshiLayoutError, match=r"call_0\.json does not exist.*annotate\.py"):
        convert(folder, tmp_path / "d")
    soundfile.write(folder / "call_0.wav", np.zeros(RATE, dtype=np.float32), RATE)
    with pytest.raises(AudioError, match=r"1 channel\(s\); moshi-finetune's dialogues are stereo"):
        convert(folder, tmp_path / "e")
