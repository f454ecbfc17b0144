"""Token vocabularies, the grammar, and per-frame targets from constructed and synthesized manifests."""

import dataclasses
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from s2s.data.manifest import SYSTEM, USER, Manifest, Segment, Word, load_manifest
from s2s.data.tasks import ENGLISH_DIGITS, GERMAN_DIGITS, say_in_german
from s2s.data.token_targets import UserState, estimated_word_times, frame_targets
from s2s.data.tokens import BOS, EOS, PAD, TokenVocabulary, grammar_errors, reply_states, speaking_from_tokens
from s2s.data.words import VocabularyError

TASKS = Path(__file__).resolve().parents[2] / "configs" / "task"
TASK = say_in_german().describe()
SYS = TokenVocabulary.from_task(TASK, SYSTEM)
USR = TokenVocabulary.from_task(TASK, USER)
F = 100  # frame size of the constructed manifests: frame f is samples [100 f, 100 f + 100)
S, P, E, U = UserState.SPEAKING, UserState.PAUSE, UserState.ENDED, UserState.SILENT


def _segment(speaker, kind, start, end, text, exchange, words=None):
    timed = None if words is None else tuple(Word(*w) for w in words)
    return Segment(speaker, kind, start, end, text, exchange, 16000, timed)


def _manifest(*segments, num_samples=2500, rate=16000):
    return Manifest("constructed", rate, num_samples, tuple(segments))


def _tokens(targets, vocabulary=SYS, which="system_tokens"):
    """{frame: name} of the non-PAD tokens."""
    tokens = getattr(targets, which)
    names = vocabulary.decode(tokens)
    return {f: names[f] for f in range(len(names)) if int(tokens[f]) != PAD}


def _grammar_ok(tokens, in_reply) -> bool:
    """Independent reference: walk the frames."""
    for token in tokens:
        if (in_reply and token == BOS) or (not in_reply and token not in (PAD, BOS)):
            return False
        in_reply = token == BOS or (in_reply and token != EOS)
    return True


def _speaking_reference(tokens, in_reply) -> list[bool]:
    flags = []
    for token in tokens:
        after = token == BOS or (in_reply and token != EOS)
        flags.append(in_reply and after)
        in_reply = after
    return flags


# --- vocabularies ---------------------------------------------------------------------------------


def test_vocabularies_come_from_the_task_record():
    assert SYS.words == GERMAN_DIGITS and SYS.size == 13 and SYS.first_word == 3
    assert USR.words == (*ENGLISH_DIGITS, "stop", "wait") and USR.size == 15
    assert SYS.encode("drei null") == [6, 3]
    assert SYS.decode([0, 1, 2, 6]) == ["<pad>", "<bos>", "<eos>", "drei"]
    echo = TokenVocabulary.from_task(instantiate(OmegaConf.load(TASKS / "echo.yaml")).describe())
    assert echo.words == ENGLISH_DIGITS
    with pytest.raises(VocabularyError, match="different tasks"):
        SYS.id("three")
    with pytest.raises(VocabularyError, match="single non-empty tokens other than"):
        TokenVocabulary(("eins", "<eos>"))
    with pytest.raises(VocabularyError, match="names no user words"):
        TokenVocabulary.from_task({"system_words": ["ja"]}, USER)


# --- the grammar ----------------------------------------------------------------------------------


def test_reply_states_and_speaking_match_a_frame_walk(generator):
    seed = generator.initial_seed()
    for _ in range(200):
        length = int(torch.randint(1, 12, (1,), generator=generator))
        tokens = torch.randint(0, 6, (length,), generator=generator)
        start = bool(torch.randint(0, 2, (1,), generator=generator))
        walk = _speaking_reference(tokens.tolist(), start)
        assert speaking_from_tokens(tokens, start).tolist() == walk, f"seed {seed}: {tokens.tolist()} {start}"
        assert bool(grammar_errors(tokens, start).any()) == (not _grammar_ok(tokens.tolist(), start)), seed
    batch = torch.tensor([[BOS, 5, EOS, PAD], [5, PAD, EOS, BOS]])
    before, after = reply_states(batch, torch.tensor([False, True]))
    assert before.tolist() == [[False, True, True, False], [True, True, True, False]]
    assert after.tolist() == [[True, True, False, False], [True, True, False, True]]


# --- targets from constructed manifests -----------------------------------------------------------


def _exchange(words=True):
    """User says "one two" in [200, 900); the system answers "eins zwei" in [1050, 1830)."""
    user = [("one", 200, 500), ("two", 500, 900)] if words else None
    system = [("eins", 1050, 1400), ("zwei", 1400, 1830)] if words else None
    return (
        _segment(USER, "turn", 200, 900, "one two", 0, user),
        _segment(SYSTEM, "reply", 1050, 1830, "eins zwei", 0, system),
    )


def test_word_level_targets_of_a_reply():
    targets = frame_targets(_manifest(*_exchange()), SYS, USR, frame_size=F)
    assert targets.frames == 25 and targets.word_times and not targets.in_reply_at_start
    # BOS the frame before the onset frame (10), words on their first frames, EOS after the last frame
    # that holds audio (1829 -> frame 18).
    assert _tokens(targets) == {9: "<bos>", 10: "eins", 14: "zwei", 19: "<eos>"}
    assert targets.system_speaking.nonzero().flatten().tolist() == list(range(10, 19))
    assert _tokens(targets, USR, "user_tokens") == {2: "one", 5: "two"}
    assert USR.decode(targets.user_words) == ["one", "two"]
    assert targets.user_state.tolist() == [U, U] + [S] * 7 + [E] * 16


def test_targets_of_a_window_that_starts_inside_a_reply_and_frame_sizes():
    targets = frame_targets(_manifest(*_exchange()), SYS, USR, frame_size=F, start=1200, num_samples=1000)
    assert targets.in_reply_at_start and targets.frames == 10
    assert _tokens(targets) == {2: "zwei", 7: "<eos>"}
    assert targets.system_speaking.tolist() == [True] * 7 + [False] * 3
    assert targets.user_words.tolist() == [] and (targets.user_state == E).all()
    # The default 640-sample frames (25 Hz at 16 kHz): onset 1050 is in frame 1, so BOS is on frame 0.
    coarse = frame_targets(_manifest(*_exchange()), SYS, USR)
    assert coarse.frames == 2500 // 640 and _tokens(coarse) == {0: "<bos>", 1: "eins", 2: "zwei"}
    # A manifest at 8 kHz read at 16 kHz gives the 16 kHz targets.
    half = _manifest(
        _segment(USER, "turn", 100, 450, "one two", 0, [("one", 100, 250), ("two", 250, 450)]),
        _segment(SYSTEM, "reply", 525, 915, "eins zwei", 0, [("eins", 525, 700), ("zwei", 700, 915)]),
        num_samples=1250, rate=8000,
    )  # fmt: skip
    resampled = frame_targets(half, SYS, USR, frame_size=F, sample_rate=16000)
    assert _tokens(resampled) == _tokens(frame_targets(_manifest(*_exchange()), SYS, USR, frame_size=F))


def test_a_cut_off_reply_ends_where_it_fell_silent_and_a_barge_in_leaves_silence():
    manifest = _manifest(
        _segment(USER, "turn", 200, 600, "three", 0, [("three", 200, 600)]),
        _segment(SYSTEM, "cut-off reply", 1000, 1420, "drei vier fünf", 0,
                 [("drei", 1000, 1300), ("vier", 1300, 1420)]),
        _segment(USER, "barge-in", 1250, 1500, "stop", 0, [("stop", 1250, 1500)]),
        _segment(USER, "turn", 2000, 2300, "four", 1, [("four", 2000, 2300)]),
    )  # fmt: skip
    targets = frame_targets(manifest, SYS, USR, frame_size=F)
    assert _tokens(targets) == {9: "<bos>", 10: "drei", 13: "vier", 15: "<eos>"}
    assert _tokens(targets, USR, "user_tokens") == {2: "three", 12: "stop", 20: "four"}
    states = targets.user_state.tolist()
    assert states[6:12] == [E] * 6, "after the turn until the barge-in: ended"
    assert states[12:15] == [S] * 3 and states[15:20] == [U] * 5, "after a barge-in: silent"
    assert states[20:23] == [S] * 3 and states[23:] == [E] * 2


def test_a_pause_inside_a_turn():
    manifest = _manifest(
        _segment(USER, "turn", 100, 1000, "one two", 0, [("one", 100, 400), ("two", 700, 1000)]),
        _segment(USER, "pause", 400, 700, "", 0, []),
        num_samples=1200,
    )
    targets = frame_targets(manifest, SYS, USR, frame_size=F)
    assert targets.user_state.tolist() == [U] + [S] * 3 + [P] * 3 + [S] * 3 + [E] * 2
    assert _tokens(targets, USR, "user_tokens") == {1: "one", 7: "two"} and _tokens(targets) == {}


def test_two_replies_close_together_keep_order_and_grammar():
    manifest = _manifest(
        _segment(SYSTEM, "reply", 1000, 1190, "eins", 0, [("eins", 1000, 1190)]),
        _segment(SYSTEM, "reply", 1210, 1500, "zwei", 1, [("zwei", 1210, 1500)]),
    )
    targets = frame_targets(manifest, SYS, USR, frame_size=F)
    # The second BOS wants frame 11, before the first reply's EOS on 12: it moves to 13, its word to 14.
    assert _tokens(targets) == {9: "<bos>", 10: "eins", 12: "<eos>", 13: "<bos>", 14: "zwei", 15: "<eos>"}
    assert _grammar_ok(targets.system_tokens.tolist(), False)


def test_a_reply_running_to_the_dialogue_end_has_no_eos():
    manifest = _manifest(_segment(SYSTEM, "reply", 2300, 2500, "eins", 0, [("eins", 2300, 2500)]))
    targets = frame_targets(manifest, SYS, USR, frame_size=F)
    assert _tokens(targets) == {22: "<bos>", 23: "eins"}
    assert targets.system_speaking[-2:].tolist() == [True, True]
    # A reply whose onset is on frame 0: its BOS falls before the window.
    first = frame_targets(_manifest(_segment(SYSTEM, "reply", 30, 250, "acht", 0, [("acht", 30, 250)])),
                          SYS, USR, frame_size=F)  # fmt: skip
    assert first.in_reply_at_start and _tokens(first) == {0: "acht", 3: "<eos>"}


def test_segment_level_targets_without_word_times():
    targets = frame_targets(_manifest(*_exchange(words=False)), SYS, USR, frame_size=F)
    assert not targets.word_times
    # "eins zwei" spread evenly over [1050, 1830): 1050 and 1440.
    assert _tokens(targets) == {9: "<bos>", 10: "eins", 14: "zwei", 19: "<eos>"}
    assert _tokens(targets, USR, "user_tokens") == {2: "one", 5: "two"}  # 200, 550
    # A turn's pause gets no words; a cut-off reply says the words that fit at the complete replies' pace
    # (780 samples / 2 words: 500 samples hold 2 of 3).
    manifest = _manifest(
        *_exchange(words=False),
        _segment(USER, "turn", 1900, 2800, "three four", 1),
        _segment(USER, "pause", 2000, 2600, "", 1),
        _segment(SYSTEM, "cut-off reply", 3000, 3500, "drei vier fünf", 1),
        num_samples=4000,
    )
    estimated = {(s.kind, s.start_sample): [(w.text, w.start_sample, w.end_sample) for w in s.words]
                 for s in estimated_word_times(manifest).segments}  # fmt: skip
    assert estimated[("turn", 1900)] == [("three", 1900, 2000), ("four", 2650, 2800)]  # 300 voiced samples
    assert estimated[("pause", 2000)] == []
    assert estimated[("cut-off reply", 3000)] == [("drei", 3000, 3250), ("vier", 3250, 3500)]
    alone = _manifest(_segment(SYSTEM, "cut-off reply", 3000, 3500, "drei vier fünf", 1), num_samples=4000)
    assert [w.start_sample for w in estimated_word_times(alone).segments[0].words] == [3000, 3167, 3333]


# --- targets from the synthesized corpus ----------------------------------------------------------


def _corpus_manifests(summary):
    for split in ("train", "val", "test"):
        yield from (load_manifest(p) for p in sorted((summary.out_dir / split).glob("*.json")))


def test_corpus_targets_follow_the_audio_and_the_grammar(tiny_corpus, generator):
    frame = 640
    for manifest in _corpus_manifests(tiny_corpus):
        whole = frame_targets(manifest, SYS, USR, frame_size=frame)
        tokens = whole.system_tokens.tolist()
        assert _grammar_ok(tokens, False), manifest.dialogue_id
        # Speaking == the frames that hold reply audio; the words between BOS and EOS are the reply's.
        audio = torch.zeros(whole.frames, dtype=torch.bool)
        for reply in manifest.speech(SYSTEM):
            audio[reply.start_sample // frame : (reply.end_sample - 1) // frame + 1] = True
        assert torch.equal(whole.system_speaking, audio), manifest.dialogue_id
        said = []
        for token in tokens:
            if token == BOS:
                said.append([])
            elif token > EOS:
                said[-1] += SYS.decode([token])
        replies = sorted(manifest.speech(SYSTEM), key=lambda r: r.start)
        assert said == [[w.text for w in r.words] for r in replies], manifest.dialogue_id
        assert USR.decode(whole.user_words) == [
            w.text for s in sorted(manifest.speech(USER), key=lambda s: s.start) for w in s.words
        ]
        # A window on the frame grid is the slice of the whole dialogue's targets.
        first = int(torch.randint(0, whole.frames - 50, (1,), generator=generator))
        window = frame_targets(manifest, SYS, USR, frame, start=first * frame, num_samples=50 * frame)
        seed = generator.initial_seed()
        assert torch.equal(window.system_tokens, whole.system_tokens[first : first + 50]), seed
        assert torch.equal(window.system_speaking, whole.system_speaking[first : first + 50])
        assert torch.equal(window.user_state, whole.user_state[first : first + 50])
        _, after = reply_states(whole.system_tokens, False)
        assert window.in_reply_at_start == bool(first > 0 and after[first - 1])
        # The same dialogue without word times: the same replies, BOS and EOS frames.
        plain = dataclasses.replace(
            manifest, segments=tuple(dataclasses.replace(s, words=None) for s in manifest.segments)
        )
        rough = frame_targets(plain, SYS, USR, frame_size=frame)
        assert not rough.word_times and torch.equal(rough.system_speaking, whole.system_speaking)
        assert _grammar_ok(rough.system_tokens.tolist(), False)
