"""Per-frame targets from a dialogue manifest: the system's tokens, the user's tokens and turn state.

Frame f of a window starting at sample `start` covers samples [start + f*F, start + (f+1)*F)
(F = `frame_size`, 640 = 25 Hz at 16 kHz); a window has `num_samples // F` frames.

System tokens, one per frame (PAD elsewhere):
    BOS  on the frame before the reply's first sample's frame (the "onset frame"),
    each word on the frame its first sample is in (PAD while it goes on, as Moshi does),
    EOS  on the frame after the reply's last sample's frame, for replies that end and replies cut off
         by a barge-in alike.
So the frames strictly between BOS and EOS are exactly the frames that hold reply audio (the
speaking flag `speaking_from_tokens` derives), the BOS and EOS frames are silent, and a word token
arrives on the frame its audio begins (the mel conditioned on the token knows the word it starts;
with BOS on the onset frame and the first word a frame later, the onset frame's mel would have to
start a word it does not know yet).
When two tokens want the same frame (a reply that starts within two frames of the previous one's
end, two words starting in one frame), the later moves to the next free frame, never earlier: the
order and the grammar always hold, at the cost of a frame or two of timing in those rare cases. A
window can start inside a reply (its BOS lies before the window): `in_reply_at_start` says so, and
one can end inside a reply (no EOS in it).

User tokens: the user's words (turns and barge-ins) on their first frames, PAD elsewhere; the
user's words starting in the window, in order, are the CTC target. User state per frame, read at
the frame's centre sample: SPEAKING inside user speech, PAUSE in a silence inside a turn, ENDED in
the silence after a turn's end until the user speaks again, SILENT otherwise (before the first turn,
after a barge-in).

Manifests without word times (format 1) get estimated ones (`estimated_word_times`): the words of a
segment spread evenly over its speech (a turn's pauses left out), and a cut-off reply says as many
of its words as fit its length at the pace of the dialogue's complete replies. An approximation:
`FrameTargets.word_times` says which kind a target is made from.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import torch

from s2s.data.manifest import SYSTEM, USER, Manifest, ManifestError, Segment, Word
from s2s.data.tokens import BOS, EOS, PAD, TokenVocabulary, speaking_from_tokens

FRAME_SIZE = 640  # 25 Hz at 16 kHz


class UserState(IntEnum):
    SILENT = 0
    SPEAKING = 1
    PAUSE = 2  # silence inside a turn: the user goes on
    ENDED = 3  # silence after a turn's end: the floor is the system's


@dataclass(frozen=True)
class FrameTargets:
    """Targets of one window; tensors are (frames,) int64 unless said otherwise."""

    system_tokens: torch.Tensor
    in_reply_at_start: bool  # the grammar state before frame 0 (a reply began before the window)
    system_speaking: torch.Tensor  # bool, derived from the tokens
    user_tokens: torch.Tensor
    user_state: torch.Tensor  # UserState values
    user_words: torch.Tensor  # (words,) ids of the user's words starting in the window, for CTC
    word_times: bool  # False: from estimated word times (a format 1 manifest)

    @property
    def frames(self) -> int:
        return int(self.system_tokens.shape[0])


def frame_targets(
    manifest: Manifest,
    system: TokenVocabulary,
    user: TokenVocabulary,
    frame_size: int = FRAME_SIZE,
    start: int = 0,
    num_samples: int | None = None,
    sample_rate: int | None = None,
) -> FrameTargets:
    """The targets of the window [start, start + num_samples) of `manifest`'s dialogue.

    `start`, `num_samples` and `frame_size` count samples at `sample_rate` (default: the manifest's;
    the manifest's times are scaled to it). `num_samples` defaults to the rest of the dialogue.
    """
    rate = sample_rate or manifest.sample_rate
    if frame_size <= 0:
        raise ValueError(f"frame_size must be a positive number of samples, got {frame_size}")
    if num_samples is None:
        num_samples = _scale(manifest.num_samples, manifest.sample_rate, rate) - start
    if start < 0 or num_samples < 0:
        raise ValueError(f"the window (start {start}, {num_samples} samples) must not be negative")
    frames = num_samples // frame_size
    timed = manifest if manifest.has_word_times else estimated_word_times(manifest)

    def frame(sample: int) -> int:
        return (_scale(sample, manifest.sample_rate, rate) - start) // frame_size

    events = []
    for reply in sorted(timed.speech(SYSTEM), key=lambda s: s.start_sample):
        events.append((frame(reply.start_sample) - 1, BOS))
        events += [(frame(w.start_sample), system.id(w.text)) for w in reply.words]
        events.append((frame(reply.end_sample - 1) + 1, EOS))
    system_tokens, before = _placed(events, frames)
    marks = [token for token in before if token in (BOS, EOS)]
    in_reply = bool(marks) and marks[-1] == BOS

    spoken = sorted((w for s in timed.speech(USER) for w in s.words), key=lambda w: w.start_sample)
    user_events = [(frame(w.start_sample), user.id(w.text)) for w in spoken]
    user_tokens, _ = _placed(user_events, frames)
    ctc = [token for at, token in user_events if 0 <= at < frames]

    centres = start + np.arange(frames) * frame_size + frame_size // 2
    return FrameTargets(
        system_tokens=system_tokens,
        in_reply_at_start=in_reply,
        system_speaking=speaking_from_tokens(system_tokens, in_reply),
        user_tokens=user_tokens,
        user_state=torch.from_numpy(_user_states(manifest, centres, rate)),
        user_words=torch.tensor(ctc, dtype=torch.int64),
        word_times=manifest.has_word_times,
    )


def _placed(events: list[tuple[int, int]], frames: int) -> tuple[torch.Tensor, list[int]]:
    """Tokens on frames, each at its frame or the next free one after the token before it.

    Returns the (frames,) tokens and the tokens that landed before frame 0, in order.
    """
    tokens = torch.full((frames,), PAD, dtype=torch.int64)
    before, previous = [], None
    for at, token in events:
        at = at if previous is None else max(at, previous + 1)
        previous = at
        if at < 0:
            before.append(token)
        elif at < frames:
            tokens[at] = token
    return tokens, before


def _user_states(manifest: Manifest, centres: np.ndarray, rate: int) -> np.ndarray:
    """UserState at each of the `centres` (samples at `rate`); later paint wins."""
    states = np.full(centres.shape, UserState.SILENT, dtype=np.int64)
    speech = sorted(manifest.speech(USER), key=lambda s: s.start_sample)

    def paint(first: int, end: int, state: UserState) -> None:
        a, b = (np.searchsorted(centres, _scale(x, manifest.sample_rate, rate)) for x in (first, end))
        states[a:b] = state

    for number, segment in enumerate(speech):
        if segment.kind == "turn":
            later = [s.start_sample for s in speech[number + 1 :] if s.start_sample >= segment.end_sample]
            paint(segment.end_sample, later[0] if later else manifest.num_samples, UserState.ENDED)
    for segment in speech:
        paint(segment.start_sample, segment.end_sample, UserState.SPEAKING)
    for pause in (s for s in manifest.segments if s.speaker == USER and s.kind == "pause"):
        paint(pause.start_sample, pause.end_sample, UserState.PAUSE)
    return states


def _scale(sample: int, from_rate: int, to_rate: int) -> int:
    return sample if from_rate == to_rate else round(sample * to_rate / from_rate)


# --- word times for manifests that have none ------------------------------------------------------


def estimated_word_times(manifest: Manifest) -> Manifest:
    """`manifest` with estimated word times (see the module docstring); one with word times as it is."""
    if manifest.has_word_times:
        return manifest
    replies = [s for s in manifest.segments if s.kind == "reply"]
    pace = (
        sum(s.end_sample - s.start_sample for s in replies) / sum(len(s.text.split()) for s in replies)
        if replies
        else None
    )
    pauses = [s for s in manifest.segments if s.speaker == USER and s.kind == "pause"]
    segments = []
    for segment in manifest.segments:
        words = segment.text.split()
        spans = [(segment.start_sample, segment.end_sample)]
        if segment.kind == "pause":
            words = []
        elif segment.kind == "turn":
            inside = [p for p in pauses if p.exchange == segment.exchange]
            spans = _without(spans[0], [(p.start_sample, p.end_sample) for p in inside])
        elif segment.kind == "cut-off reply" and pace is not None:
            fit = math.ceil((segment.end_sample - segment.start_sample) / pace)
            words = words[: max(1, min(len(words), fit))]
        segments.append(dataclasses.replace(segment, words=_spread(segment, words, spans)))
    return dataclasses.replace(manifest, segments=tuple(segments))


def _without(span: tuple[int, int], holes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """`span` less the `holes` inside it, as ordered spans."""
    pieces, cursor = [], span[0]
    for first, end in sorted(holes):
        if first > cursor:
            pieces.append((cursor, min(first, span[1])))
        cursor = max(cursor, end)
    if cursor < span[1]:
        pieces.append((cursor, span[1]))
    return pieces


def _spread(segment: Segment, words: list[str], spans: list[tuple[int, int]]) -> tuple[Word, ...]:
    """`words` evenly over the speech `spans`; a word ends at the next one's start or its span's end."""
    total = sum(end - first for first, end in spans)
    if total < len(words):
        raise ManifestError(
            f"{segment.kind!r} segment at sample {segment.start_sample} is {total} samples of speech, too "
            f"short for its {len(words)} words"
        )
    starts, span_of = [], []
    for i in range(len(words)):
        offset = round(i * total / len(words))
        for number, (first, end) in enumerate(spans):
            if offset < end - first:
                starts.append(first + offset)
                span_of.append(number)
                break
            offset -= end - first
    ends = [
        starts[i + 1] if i + 1 < len(words) and span_of[i + 1] == span_of[i] else spans[span_of[i]][1]
        for i in range(len(words))
    ]
    return tuple(Word(w, s, e) for w, s, e in zip(words, starts, ends, strict=True))
