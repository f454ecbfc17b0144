"""The synthetic corpus: byte determinism, manifests that agree with the audio, turn-taking timing."""

import dataclasses
import hashlib
import json
import time

import numpy as np
import pytest
import soundfile
from tiny_corpus import TINY_TIMING, TINY_VOICES, tiny_config

from s2s.data.corpus import CorpusError, generate_corpus, read_record
from s2s.data.espeak import Espeak, EspeakError, Voice
from s2s.data.manifest import SYSTEM, USER, load_manifest
from s2s.data.synth import CorpusConfig, DialogueJob, DialogueSynthesizer, DialogueTiming, UserVoices
from s2s.data.tasks import say_in_german


def _digests(folder):
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _dialogues(summary):
    for split in ("train", "val", "test"):
        for manifest_path in sorted((summary.out_dir / split).glob("*.json")):
            audio, rate = soundfile.read(manifest_path.with_suffix(".wav"), dtype="int16", always_2d=True)
            yield load_manifest(manifest_path), audio.T, rate


def test_corpus_has_every_split_and_event(tiny_corpus):
    kinds = set()
    for manifest, audio, rate in _dialogues(tiny_corpus):
        assert rate == 16000 and audio.shape == (2, manifest.num_samples)
        assert TINY_TIMING.seconds[0] <= manifest.duration <= TINY_TIMING.seconds[1] + 1e-3
        kinds |= {segment.kind for segment in manifest.segments}
        assert len([s for s in manifest.segments if s.kind == "turn"]) >= 3, "a dialogue has several turns"
    assert kinds == {"turn", "pause", "barge-in", "reply", "cut-off reply"}
    assert all(tiny_corpus.dialogues[split] >= 1 for split in ("train", "val", "test"))
    assert read_record(tiny_corpus.out_dir)["complete"] is True


def test_same_seed_gives_byte_identical_files_on_any_worker_count(tiny_corpus, tmp_path):
    again = generate_corpus(tiny_config(tmp_path), say_in_german(), workers=1, progress=False)
    assert again.synthesized == sum(tiny_corpus.dialogues.values())
    assert _digests(tmp_path) == _digests(tiny_corpus.out_dir)


def test_manifest_agrees_with_audio(tiny_corpus):
    hop = 160  # 10 ms
    for manifest, audio, _rate in _dialogues(tiny_corpus):
        for channel, speaker in enumerate((USER, SYSTEM)):
            speech = np.zeros(manifest.num_samples, dtype=bool)
            for segment in manifest.speech(speaker):
                speech[segment.start_sample : segment.end_sample] = True
                piece = audio[channel, segment.start_sample : segment.end_sample].astype(np.float64) / 32768
                rms_db = 10 * np.log10(np.mean(piece**2))
                assert rms_db > -40, f"{manifest.dialogue_id}: {segment} is nearly silent ({rms_db:.1f} dBFS)"
                # The segment edges sit on speech: audible (>= 1% of the phrase peak, the trim
                # threshold, less 1 dB of level jitter between phrases) in its first and last 10 ms.
                edge = 0.008 * np.abs(piece).max()
                assert np.abs(piece[:hop]).max() > edge and np.abs(piece[-hop:]).max() > edge, segment
            assert not audio[channel, ~speech].any(), (
                f"{manifest.dialogue_id}: {speaker} sounds outside its segments"
            )
        for pause in (s for s in manifest.segments if s.kind == "pause"):
            assert not audio[0, pause.start_sample : pause.end_sample].any()


def test_turn_taking_timing(tiny_corpus):
    timing = TINY_TIMING
    tolerance = 1.5 / 16000
    for manifest, _, _ in _dialogues(tiny_corpus):
        by_exchange = {}
        for segment in manifest.segments:
            by_exchange.setdefault(segment.exchange, []).append(segment)
        for segments in by_exchange.values():
            kinds = {s.kind: s for s in segments}
            turn = kinds["turn"]
            reply = kinds.get("reply") or kinds["cut-off reply"]
            assert (
                timing.reply_delay[0] - tolerance
                <= reply.start - turn.end
                <= timing.reply_delay[1] + tolerance
            )
            if "pause" in kinds:
                pause = kinds["pause"]
                assert turn.start < pause.start < pause.end < turn.end
                assert timing.pause[0] - tolerance <= pause.end - pause.start <= timing.pause[1] + tolerance
            if "cut-off reply" in kinds:
                barge_in = kinds["barge-in"]
                assert barge_in.speaker == USER and barge_in.text in ("stop", "wait")
                assert reply.start < barge_in.start < reply.end
                assert reply.end - barge_in.start <= 0.25, "the system must fall silent within 0.25 s"
            else:
                assert "barge-in" not in kinds


def test_reply_is_the_task_answer(tiny_corpus):
    task = say_in_german()
    translate = dict(zip(task.user_digit_words, task.system_digit_words, strict=True))
    for manifest, _, _ in _dialogues(tiny_corpus):
        turns = {s.exchange: s for s in manifest.segments if s.kind == "turn"}
        for reply in (s for s in manifest.segments if s.speaker == SYSTEM):
            assert reply.text.split() == [translate[w] for w in turns[reply.exchange].text.split()]


def test_splits_use_disjoint_seeds_and_test_holds_out_voices(tiny_corpus):
    held_out = set(UserVoices().held_out_variants)
    seeds = set()
    for manifest, _, _ in _dialogues(tiny_corpus):
        seeds.add(tuple(manifest.info["seed"]))
        variant = manifest.info["user_voice"]["name"].split("+")[1]
        assert manifest.info["user_voice"]["held_out"] == (variant in held_out)
        # train and val never hear a held-out voice; the tiny corpus gives test only held-out ones
        assert (variant in held_out) == (manifest.info["split"] == "test")
    assert len(seeds) == sum(tiny_corpus.dialogues.values())


def test_interrupted_generation_resumes_and_more_hours_extend(tiny_corpus, tmp_path):
    config = tiny_config(tmp_path)
    generate_corpus(config, say_in_german(), workers=2, progress=False)
    (tmp_path / "train" / "train_00001.json").unlink()  # as if killed before the manifest was written
    resumed = generate_corpus(config, say_in_german(), workers=2, progress=False)
    assert resumed.synthesized == 1
    assert _digests(tmp_path) == _digests(tiny_corpus.out_dir)

    more = generate_corpus(
        tiny_config(tmp_path, hours={**config.hours, "val": 0.012}),
        say_in_german(),
        workers=2,
        progress=False,
    )
    assert more.dialogues["val"] > tiny_corpus.dialogues["val"]
    assert more.synthesized == more.dialogues["val"] - tiny_corpus.dialogues["val"]
    before, after = _digests(tiny_corpus.out_dir), _digests(tmp_path)
    assert all(after[name] == digest for name, digest in before.items() if name.endswith(".wav"))


def test_other_recipe_or_foreign_audio_is_refused_not_overwritten(tiny_corpus, tmp_path):
    corpus_dir = tmp_path / "corpus"
    generate_corpus(tiny_config(corpus_dir, hours={"train": 0.006}), say_in_german(), progress=False)
    before = _digests(corpus_dir)
    with pytest.raises(CorpusError, match=r"other settings \(differences in: config\).*overwrite=true"):
        generate_corpus(
            tiny_config(corpus_dir, hours={"train": 0.006}, seed=7), say_in_german(), progress=False
        )
    assert _digests(corpus_dir) == before

    recordings = tmp_path / "recordings"
    (recordings / "train").mkdir(parents=True)
    soundfile.write(recordings / "train" / "mine.wav", np.zeros((1600, 2)), 16000)
    with pytest.raises(CorpusError, match="not an s2s synthetic corpus"):
        generate_corpus(tiny_config(recordings), say_in_german(), progress=False)
    assert (recordings / "train" / "mine.wav").is_file()

    replaced = generate_corpus(
        tiny_config(corpus_dir, hours={"train": 0.006}, seed=7),
        say_in_german(),
        overwrite=True,
        progress=False,
    )
    assert replaced.synthesized == replaced.dialogues["train"]
    assert json.loads((corpus_dir / "corpus.json").read_text())["recipe"]["config"]["seed"] == 7


def test_espeak_phrases_are_deterministic_and_bad_voices_are_named():
    espeak = Espeak()
    # Klatt voices draw noise from rand(); the f* variants from espeak's own clock-seeded generator.
    voices = [Voice("en-us+klatt4", rate=180, pitch=60), Voice("en+f2", rate=207, pitch=63, pitch_range=62)]
    first = [espeak.synthesize("two six seven eight.", voice) for voice in voices]
    espeak.synthesize("eight.", Voice("en+m3"))
    time.sleep(1.1)  # a new second: a clock-seeded generator would now give other samples
    second = [espeak.synthesize("two six seven eight.", voice) for voice in voices]
    for (a, rate), (b, _) in zip(first, second, strict=True):
        assert rate == 22050 and a.size > rate // 2
        assert np.array_equal(a, b)
    with pytest.raises(EspeakError, match="no voice variant 'nobody'"):
        espeak.synthesize("one.", Voice("en+nobody"))
    with pytest.raises(EspeakError, match="rejected voice 'xx-nowhere'"):
        espeak.synthesize("one.", Voice("xx-nowhere"))
    with pytest.raises(ValueError, match="outside espeak's range"):
        Voice("en", rate=1000)


def test_timing_config_is_checked():
    with pytest.raises(ValueError, match=r"within 0\.25 s"):
        DialogueTiming(stop_reaction=(0.1, 0.3))
    with pytest.raises(ValueError, match=r"timing\.pause"):
        DialogueTiming(pause=(0.8, 0.3))
    with pytest.raises(ValueError, match="held out of training"):
        UserVoices(variants=("m1", "m2"), held_out_variants=("m2",))


def test_split_timing_changes_only_its_split(tmp_path):
    """More pauses in train leaves the judged splits byte-identical; the record names the change."""
    hours = {"train": 0.012, "test": 0.012}
    plain = generate_corpus(tiny_config(tmp_path / "plain", hours=hours), say_in_german(), progress=False)
    more = tiny_config(tmp_path / "more", hours=hours, split_timing={"train": {"pause_probability": 1.0}})
    changed = generate_corpus(more, say_in_german(), progress=False)
    plain_files, changed_files = _digests(plain.out_dir / "test"), _digests(changed.out_dir / "test")
    assert plain_files and plain_files == changed_files
    pauses = [
        sum(
            1
            for path in (summary.out_dir / "train").glob("*.json")
            for segment in load_manifest(path).segments
            if segment.kind == "pause"
        )
        for summary in (plain, changed)
    ]
    turns = sum(
        1
        for path in (changed.out_dir / "train").glob("*.json")
        for segment in load_manifest(path).segments
        if segment.kind == "turn" and len(segment.words) >= 2
    )
    assert pauses[1] == turns > pauses[0], pauses
    assert read_record(changed.out_dir)["recipe"]["config"]["split_timing"] == {
        "train": {"pause_probability": 1.0}
    }
    assert "split_timing" not in read_record(plain.out_dir)["recipe"]["config"]


def test_split_timing_is_checked():
    with pytest.raises(ValueError, match="unknown splits"):
        CorpusConfig(split_timing={"dev": {"pause_probability": 0.5}})
    with pytest.raises(ValueError, match="not timing fields"):
        CorpusConfig(split_timing={"train": {"pauses": 0.5}})
    with pytest.raises(ValueError, match="must be a probability"):
        CorpusConfig(split_timing={"train": {"pause_probability": 1.5}})
    built = CorpusConfig.from_dict({"split_timing": {"train": {"pause": [0.3, 0.5]}, "val": None}})
    assert built.timing_for("train").pause == (0.3, 0.5) and built.timing_for("val") == DialogueTiming()


def test_default_test_split_alternates_seen_and_held_out_voices():
    synthesizer = DialogueSynthesizer(CorpusConfig(), say_in_german())
    rng = np.random.default_rng()
    flags = [synthesizer._user_voice(rng, DialogueJob("test", i, 30.0)) for i in range(10)]
    assert [held_out for _, held_out in flags] == [False, True] * 5
    held_out = set(UserVoices().held_out_variants)
    assert all((voice.name.split("+")[1] in held_out) == flag for voice, flag in flags)
    assert not any(synthesizer._user_voice(rng, DialogueJob("val", i, 30.0))[1] for i in range(10))


VAL_UNSEEN = ("m8", "klatt5", "Gene2")


def test_val_held_out_voices_come_from_their_own_pool_and_leave_test_and_train_alone(tmp_path):
    """Val's held-out voices: the given fraction of val dialogues, from val's pool only; the train
    and test splits are byte-identical to a corpus without them; the recipe records them, and a
    recipe without them is unchanged."""
    voices = UserVoices(val_held_out_variants=VAL_UNSEEN, val_held_out_fraction=0.5)
    synthesizer = DialogueSynthesizer(CorpusConfig(voices=voices), say_in_german())
    rng = np.random.default_rng()
    flags = [synthesizer._user_voice(rng, DialogueJob("val", i, 30.0)) for i in range(10)]
    assert [held_out for _, held_out in flags] == [False, True] * 5
    assert all((voice.name.split("+")[1] in VAL_UNSEEN) == flag for voice, flag in flags)
    test_voices = [synthesizer._user_voice(rng, DialogueJob("test", i, 30.0))[0] for i in range(10)]
    assert not any(v.name.split("+")[1] in VAL_UNSEEN for v in test_voices)
    assert not any(synthesizer._user_voice(rng, DialogueJob("train", i, 30.0))[1] for i in range(10))

    hours = {"train": 0.012, "val": 0.012, "test": 0.012}
    plain = generate_corpus(tiny_config(tmp_path / "plain", hours=hours), say_in_german(), progress=False)
    unseen_val = tiny_config(tmp_path / "unseen", hours=hours, voices=dataclasses.replace(TINY_VOICES, **{
        "val_held_out_variants": VAL_UNSEEN, "val_held_out_fraction": 1.0}))  # fmt: skip
    changed = generate_corpus(unseen_val, say_in_german(), progress=False)
    for split in ("train", "test"):
        assert _digests(plain.out_dir / split) == _digests(changed.out_dir / split) != {}, split
    for path in (changed.out_dir / "val").glob("*.json"):
        voice = load_manifest(path).info["user_voice"]
        assert voice["held_out"] and voice["name"].split("+")[1] in VAL_UNSEEN, path
    recorded = read_record(changed.out_dir)["recipe"]["config"]["voices"]
    assert recorded["val_held_out_variants"] == list(VAL_UNSEEN) and recorded["val_held_out_fraction"] == 1.0
    assert "val_held_out_variants" not in read_record(plain.out_dir)["recipe"]["config"]["voices"]


def test_val_held_out_voices_are_checked():
    with pytest.raises(ValueError, match="may not also be test's"):
        UserVoices(val_held_out_variants=("m7",))
    with pytest.raises(ValueError, match="held out of training"):
        UserVoices(val_held_out_variants=("m1",))
    with pytest.raises(ValueError, match="needs val_held_out_variants"):
        UserVoices(val_held_out_fraction=0.5)
    with pytest.raises(ValueError, match=r"val_held_out_fraction must be in \[0, 1\]"):
        UserVoices(val_held_out_variants=VAL_UNSEEN, val_held_out_fraction=1.5)


def test_late_replies_start_in_their_own_range_in_their_split_only(tmp_path):
    """late_reply_probability 1 in train: every train reply starts late_reply_delay after its turn;
    test stays byte-identical to a corpus without late replies, and a corpus without them keeps the
    recipe it was made with (no late-reply keys in corpus.json)."""
    hours = {"train": 0.012, "test": 0.012}
    plain = generate_corpus(tiny_config(tmp_path / "plain", hours=hours), say_in_german(), progress=False)
    late = tiny_config(
        tmp_path / "late", hours=hours, split_timing={"train": {"late_reply_probability": 1.0}}
    )
    changed = generate_corpus(late, say_in_german(), progress=False)
    assert _digests(plain.out_dir / "test") == _digests(changed.out_dir / "test")
    low, high = DialogueTiming().late_reply_delay
    tolerance = 1.5 / 16000
    delays = []
    for path in sorted((changed.out_dir / "train").glob("*.json")):
        manifest = load_manifest(path)
        turns = {s.exchange: s for s in manifest.segments if s.kind == "turn"}
        for reply in (s for s in manifest.segments if s.speaker == SYSTEM):
            delays.append(reply.start - turns[reply.exchange].end)
    assert delays and all(low - tolerance <= d <= high + tolerance for d in delays), delays
    assert "late_reply_probability" not in read_record(plain.out_dir)["recipe"]["config"]["timing"]
    with pytest.raises(ValueError, match="late_reply_probability must be a probability"):
        DialogueTiming(late_reply_probability=1.5)
    with pytest.raises(ValueError, match=r"timing\.late_reply_delay"):
        DialogueTiming(late_reply_delay=(1.5, 0.6))
