"""A trained model served over websockets answers a synthesized user turn after the turn ends.

Needs the model README command 1 trains (outputs/train/tiny-synth-auto, or S2S_SERVE_MODEL=DIR):
.ci/run runs README command 1 and then this file; without the model it is skipped with the reason.
Six users (digits said by espeak voices, seen and held-out ones) talk to one server at once; each
turn is 1 s of silence, the digits, then 4 s of listening.
"""

import asyncio
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from s2s.data.audio import resample
from s2s.data.espeak import Espeak, Voice
from s2s.data.tokens import BOS
from s2s.serve.client import talk
from s2s.serve.server import ServeOptions, start

ROOT = Path(__file__).resolve().parents[2]
MODEL = Path(os.environ.get("S2S_SERVE_MODEL", ROOT / "outputs/train/tiny-synth-auto"))
RATE = 16000
LEAD, LISTEN = 1.0, 4.0
TURNS = [
    ("en-us+m3", "three seven five"), ("en-gb-x-rp+f2", "nine two four one"), ("en-us+f5", "six eight"),
    ("en+klatt4", "one five zero seven"), ("en-029+m1", "four four two"), ("en-us-nyc+Andrea", "eight three"),
]  # fmt: skip

pytestmark = pytest.mark.skipif(
    not MODEL.exists(), reason=f"no trained model at {MODEL}: run README command 1 (or set S2S_SERVE_MODEL)"
)


def _turn(espeak: Espeak, voice: str, text: str) -> np.ndarray:
    speech = espeak.speak(text, Voice(voice, rate=170))
    samples = torch.from_numpy(speech.samples.astype(np.float32) / 32768.0)[None]
    audio = resample(samples, speech.sample_rate, RATE)[0].numpy()
    return 0.5 * audio / np.abs(audio).max()  # peaks at -6 dBFS, as the corpus' user phrases do


def test_the_served_model_replies_after_the_users_turn_ends():
    espeak = Espeak()
    try:
        turns = [_turn(espeak, voice, text) for voice, text in TURNS]
    finally:
        espeak.close()
    lead = np.zeros(int(LEAD * RATE), np.float32)

    async def scenario():
        options = ServeOptions(model=str(MODEL), port=0, max_connections=len(turns), backlog_seconds=30.0)
        served = await start(options)
        try:
            users = [np.concatenate([lead, turn]) for turn in turns]
            talks = [talk(served.url, user, listen_seconds=LISTEN, speed=3.0) for user in users]
            return await asyncio.gather(*talks)
        finally:
            await served.stop()

    conversations = asyncio.run(scenario())
    answered, early, report = 0, 0, []
    for (voice, text), turn, conversation in zip(TURNS, turns, conversations, strict=True):
        hello = conversation.hello
        chunk, frame_seconds = hello["chunk_samples"], hello["frame_seconds"]
        sent = len(lead) + len(turn) + int(LISTEN * RATE)
        assert len(conversation.replies) == sent // chunk, f"{voice}: one reply per whole chunk sent"
        frames = hello["chunk_frames"]
        assert all(len(r.audio) == chunk and len(r.tokens) == frames for r in conversation.replies), voice
        tokens = np.concatenate([r.tokens for r in conversation.replies])
        loud = np.flatnonzero(np.abs(turn) > 0.01)
        ends = LEAD + (loud[-1] + 1) / RATE  # the last audible sample of the digits
        opens = np.flatnonzero(tokens == BOS) * frame_seconds
        first = None if len(opens) == 0 else float(opens[0])
        after = opens[(opens >= ends) & (opens <= ends + 3.0)]
        words = [w for r in conversation.replies for w in r.words if w]
        report.append(f"{voice} '{text}': turn ends {ends:.2f} s, replies open at {opens.round(2).tolist()}, "
                      f"words {words[:8]}")  # fmt: skip
        early += first is not None and first < ends
        if len(after):
            answered += 1
            audio = np.concatenate([r.audio for r in conversation.replies]).astype(np.float32) / 32768
            during = audio[int(after[0] * RATE) : int((after[0] + 0.5) * RATE)]
            assert np.sqrt(np.mean(during**2)) > 1e-3, f"{voice}: the reply's audio is silent"
    summary = f"{answered} of {len(TURNS)} turns answered within 3 s, {early} talked over:\n"
    summary += "\n".join(report)
    print(summary)
    # the tiny model of README command 1 misses about a fifth of the turns and takes over 1 pause in 35
    assert early <= 1 and answered >= len(TURNS) // 2, summary
