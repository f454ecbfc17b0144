"""The share of barge-ins stopped within 300 ms (issue 16's barge-in bar), counted from where the
model fell silent after each barge-in in a constructed dialogue."""

import numpy as np
import torch

from s2s.data.manifest import Manifest, Segment
from s2s.models.config import DuplexConfig
from s2s.streaming.intervals import wilson_interval
from s2s.streaming.report import STOP_WITHIN_S, turn_taking
from s2s.streaming.runner import StreamedDialogue

RATE = 16000
CONFIG = DuplexConfig()
FRAME = CONFIG.frame_samples / RATE  # seconds per model frame
# stop delays in frames, each at least two frames from the 300 ms line; None: never stops (ignored)
DELAYS = (1, 2, 4, 5, 10, 13, 20, None)


def _dialogue(delays: list[int | None]) -> StreamedDialogue:
    """One exchange every 8 s: a user turn, a reply 0.4 s after it, a barge-in 0.6 s into the reply;
    the model speaks from the reply's start until `delay` frames after the barge-in."""
    segments, frames = [], int(8.0 * len(delays) / FRAME) + 100
    speaking = np.zeros(frames, np.float32)
    for exchange, delay in enumerate(delays):
        start = int(exchange * 8.0 / FRAME) + 10  # frames
        turn_end, reply, barge = start + 25, start + 35, start + 50
        for speaker, kind, first, last in (
            ("user", "turn", start, turn_end),
            ("system", "cut-off reply", reply, barge + 8),
            ("user", "barge-in", barge, barge + 8),
        ):
            segments.append(Segment(speaker, kind, first * CONFIG.frame_samples, last * CONFIG.frame_samples,
                                    "x", exchange, RATE))  # fmt: skip
        speaking[reply : barge + (delay if delay is not None else 150)] = 1.0
    manifest = Manifest("barge-ins", RATE, frames * CONFIG.frame_samples, tuple(segments))
    return StreamedDialogue(
        name="barge-ins", user=np.zeros(frames * CONFIG.frame_samples, np.float32), reference=None,
        mel=np.zeros((frames * 4, 80), np.float32), speaking=speaking, audio=None,
        feedback=torch.zeros(frames, CONFIG.feedback_dim), manifest=manifest, sample_rate=RATE,
    )  # fmt: skip


def test_barge_ins_stopped_within_300_ms_are_counted(generator):
    seed = generator.initial_seed()
    order = torch.randperm(len(DELAYS), generator=generator).tolist()
    delays = [DELAYS[i] for i in order]
    figures = turn_taking([_dialogue(delays)], CONFIG, 3.0, sources=("probability",))["probability"]
    in_time = sum(d is not None and d * FRAME <= STOP_WITHIN_S for d in delays)
    assert in_time == 4, "the constructed delays straddle the line"
    assert figures["barge_in_stop_latency_s"]["count"] == len(DELAYS) - 1, (seed, figures)
    assert figures["ignored_barge_in_rate"] == 1 / len(DELAYS), (seed, figures)
    assert figures["barge_ins_stopped_within_300ms"] == in_time / len(DELAYS), (seed, delays, figures)
    interval = figures["intervals"]["barge_ins_stopped_within_300ms"]
    assert interval == wilson_interval(in_time, len(DELAYS)), (seed, interval)
