"""The span of the system channel in which each reply is judged, from a dialogue manifest.

A reply's window opens when the user ends the turn it answers and closes when the user speaks
again (the next turn or a barge-in) or at the end of the dialogue. The recognizer trains on these
windows of the reference channel, and the streaming evaluation recognizes the model's output over
the very same windows, so a reply that comes late or runs long is judged where it actually lands.
"""

from __future__ import annotations

from dataclasses import dataclass

from s2s.data.manifest import SYSTEM, USER, Manifest, ManifestError


@dataclass(frozen=True)
class ReplyWindow:
    dialogue_id: str
    exchange: int
    words: tuple[str, ...]  # what the reference reply says (its manifest text)
    kind: str  # "reply" or "cut-off reply" (stopped by a barge-in: `words` were not all spoken)
    start: float  # window, seconds: the user's end of turn ...
    end: float  # ... to the user's next speech onset (turn or barge-in), or the dialogue's end
    reply_start: float  # the reference reply, seconds
    reply_end: float
    turn_end: float  # the user's end of turn this reply answers (== start)
    barge_in: float | None  # onset of the user's barge-in into this reply, if any
    start_sample: int  # the window in samples at `sample_rate` (exact, for slicing)
    end_sample: int
    sample_rate: int

    @property
    def duration(self) -> float:
        return (self.end_sample - self.start_sample) / self.sample_rate

    def slice(self, audio):
        """The window of a (..., samples) signal at the manifest's sample rate."""
        return audio[..., self.start_sample : self.end_sample]


def reply_windows(manifest: Manifest) -> list[ReplyWindow]:
    """One window per system reply (complete or cut off), in time order."""
    user_turns = {s.exchange: s for s in manifest.segments if s.speaker == USER and s.kind == "turn"}
    barge_ins = {s.exchange: s for s in manifest.segments if s.speaker == USER and s.kind == "barge-in"}
    onsets = sorted(s.start_sample for s in manifest.speech(USER))  # turns and barge-ins, not pauses
    windows = []
    for reply in sorted(manifest.speech(SYSTEM), key=lambda s: s.start_sample):
        turn = user_turns.get(reply.exchange)
        if turn is None:
            raise ManifestError(
                f"{manifest.dialogue_id}: system {reply.kind!r} of exchange {reply.exchange} has no user "
                "'turn' segment of the same exchange; its reply window cannot be placed"
            )
        if turn.end_sample > reply.start_sample:
            raise ManifestError(
                f"{manifest.dialogue_id}: exchange {reply.exchange}'s reply starts at {reply.start:.3f} s, "
                f"before the user's turn ends at {turn.end:.3f} s"
            )
        end_sample = next((t for t in onsets if t > turn.end_sample), manifest.num_samples)
        barge_in = barge_ins.get(reply.exchange)
        rate = manifest.sample_rate
        windows.append(
            ReplyWindow(
                dialogue_id=manifest.dialogue_id,
                exchange=reply.exchange,
                words=tuple(reply.text.split()),
                kind=reply.kind,
                start=turn.end_sample / rate,
                end=end_sample / rate,
                reply_start=reply.start,
                reply_end=reply.end,
                turn_end=turn.end,
                barge_in=barge_in.start if barge_in is not None else None,
                start_sample=turn.end_sample,
                end_sample=end_sample,
                sample_rate=rate,
            )
        )
    return windows
