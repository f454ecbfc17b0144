"""A small moshi-finetune folder made in the test: stereo 24 kHz wavs, moshi (the system) on the left,
the user on the right, each beside its word timestamps (imported by the data tests)."""

import json
from pathlib import Path

import numpy as np
import soundfile

RATE = 24000
# (word, start, end, speaker): the user asks, moshi answers, the user cuts in, moshi goes on
WORDS = [
    ["what's", 0.30, 0.62, "SPEAKER_OTHER"],
    ["the", 0.62, 0.80, "SPEAKER_OTHER"],
    ["time?", 0.80, 1.20, "SPEAKER_OTHER"],
    [" It's", 1.60, 1.90, "SPEAKER_MAIN"],
    [" three", 1.90, 2.30, "SPEAKER_MAIN"],
    [" o'clock.", 2.30, 2.90, "SPEAKER_MAIN"],
    ["thanks", 3.40, 3.90, "SPEAKER_OTHER"],
    [" You're", 4.20, 4.50, "SPEAKER_MAIN"],
    [" welcome", 4.45, 5.00, "SPEAKER_MAIN"],  # overlaps the word before (Whisper does this)
    [" !", 5.00, 5.00, "SPEAKER_MAIN"],  # no duration: dropped
]


def make_moshi_folder(root: Path, dialogues: int = 2, seed: int = 0) -> Path:
    """`root/data_stereo/call_<n>.{wav,json}` and `root/data.jsonl`; noise where each word is said
    (16-bit values, on the speaker's own channel), silence elsewhere."""
    rng = np.random.default_rng(seed)
    folder = root / "data_stereo"
    folder.mkdir(parents=True)
    lines = []
    for n in range(dialogues):
        audio = np.zeros((6 * RATE, 2), dtype=np.float32)
        for _, start, end, speaker in WORDS:
            channel = 0 if speaker == "SPEAKER_MAIN" else 1
            span = slice(round(start * RATE), round(end * RATE))
            audio[span, channel] = (
                np.round(rng.normal(0, 0.2, span.stop - span.start).clip(-1, 1) * 32767) / 32768
            )
        soundfile.write(folder / f"call_{n}.wav", audio, RATE, subtype="PCM_16")
        (folder / f"call_{n}.json").write_text(
            json.dumps({"alignments": [[w, [s, e], p] for w, s, e, p in WORDS]})
        )
        lines.append(json.dumps({"path": f"data_stereo/call_{n}.wav", "duration": 6.0}))
    (root / "data.jsonl").write_text("\n".join(lines) + "\n")
    return root / "data.jsonl"
