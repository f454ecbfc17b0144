"""espeak-ng text-to-speech through its C library, one forked process per phrase.

The library keeps state between phrases (and its Klatt voices draw noise from libc's `rand`), so a
phrase synthesized after another can differ from the same phrase synthesized first; initialization
also seeds its random generator from the clock. Every phrase is therefore spoken by a freshly forked
child that initializes the library from scratch and then fixes the seeds: each phrase is a pure
function of (text, voice), and a corpus is byte-identical from run to run whatever order, process
or time its phrases are made in.

The forking happens in a small helper process (this file run as a script, which imports neither
torch nor s2s), because forking a process that holds torch costs ten times more.

Each phrase also reports where its words start: espeak raises a word event (`espeakEVENT_WORD`)
as it begins each word, carrying the word's character span in the text and its exact sample
position in the output (the event's `sample`; `audio_position` is the same instant rounded to ms).

The library and its voices come from the `espeakng-loader` wheel; a system installation (Debian's
`libespeak-ng1` + `espeak-ng-data`) works too by passing its paths.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import struct
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

# Values from espeak-ng's speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE = 1
_PARAM_VOLUME = 2
_PARAM_PITCH = 3
_PARAM_RANGE = 4
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1


class _Event(ctypes.Structure):
    """espeak_EVENT of speak_lib.h."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),  # characters from the start of the text, 1-based
        ("length", ctypes.c_int),  # the word's length in characters
        ("audio_position", ctypes.c_int),  # ms into the output
        ("sample", ctypes.c_int),  # samples into the output
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),
    ]


_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)
_WORD_EVENT = struct.Struct("<iii")  # text position (0-based), length in characters, sample


@dataclass(frozen=True)
class Voice:
    """One speaker: an espeak voice name (`language+variant`, e.g. `en-us+f3`) and its delivery."""

    name: str
    rate: int = 170  # words per minute (espeak accepts 80-450)
    pitch: int = 50  # base pitch, 0-100
    pitch_range: int = 50  # intonation range, 0-100

    def __post_init__(self):
        if not self.name or any(c.isspace() for c in self.name):
            raise ValueError(f"voice name {self.name!r} must be an espeak voice such as 'en-us+f3'")
        if not 80 <= self.rate <= 450:
            raise ValueError(f"voice rate {self.rate} words/min is outside espeak's range 80-450")
        for field, value in (("pitch", self.pitch), ("pitch_range", self.pitch_range)):
            if not 0 <= value <= 100:
                raise ValueError(f"voice {field} {value} is outside 0-100")


@dataclass(frozen=True)
class SpokenWord:
    """A word as espeak spoke it: its text (as written in the phrase) and its first sample."""

    text: str
    start: int


@dataclass(frozen=True)
class Speech:
    """One synthesized phrase: int16 samples at `sample_rate`, and where each word starts."""

    samples: np.ndarray
    sample_rate: int
    words: tuple[SpokenWord, ...]


class EspeakError(RuntimeError):
    """espeak-ng could not be loaded or could not speak a phrase."""


class Espeak:
    """Synthesizes phrases to int16 audio at the library's own rate (22050 Hz for espeak-ng)."""

    def __init__(
        self, library_path: str | os.PathLike | None = None, data_path: str | os.PathLike | None = None
    ):
        if library_path is None or data_path is None:
            try:
                import espeakng_loader
            except ImportError as error:
                raise EspeakError(
                    "espeak-ng is needed to synthesize dialogues: `pip install espeakng-loader` "
                    "(bundles the library and voices), or pass library_path/data_path of a system install"
                ) from error
            library_path = library_path or espeakng_loader.get_library_path()
            data_path = data_path or espeakng_loader.get_data_path()
        self.library_path = str(library_path)
        self.data_path = str(data_path)
        if not Path(self.data_path, "phontab").is_file():
            raise EspeakError(f"{self.data_path} is not an espeak-ng data folder (no 'phontab' in it)")
        if not Path(self.library_path).is_file():
            raise EspeakError(f"the espeak-ng library {self.library_path} does not exist")
        self._server: subprocess.Popen | None = None

    def synthesize(self, text: str, voice: Voice) -> tuple[np.ndarray, int]:
        """Speak `text` with `voice`; returns (int16 samples, sample rate)."""
        speech = self.speak(text, voice)
        return speech.samples, speech.sample_rate

    def speak(self, text: str, voice: Voice) -> Speech:
        """Speak `text` with `voice`; the samples, their rate, and the words' start samples."""
        if not text.strip():
            raise ValueError("cannot synthesize an empty phrase")
        self.check_variant(voice)
        server = self._running_server()
        request = {"text": text, **asdict(voice)}
        server.stdin.write((json.dumps(request) + "\n").encode())
        server.stdin.flush()
        header = server.stdout.read(16)
        if len(header) < 16:
            self.close()
            raise EspeakError(f"the espeak helper process died on {text!r} with voice {voice.name!r}")
        sample_rate, error, count, size = struct.unpack("<iiii", header)
        events = server.stdout.read(count * _WORD_EVENT.size)
        payload = server.stdout.read(size)
        if error != 0 or sample_rate <= 0:
            raise EspeakError(f"espeak-ng rejected voice {voice.name!r} or phrase {text!r} (error {error})")
        words = tuple(
            SpokenWord(text[position : position + length], sample)
            for position, length, sample in _WORD_EVENT.iter_unpack(events)
        )
        return Speech(np.frombuffer(payload, dtype=np.int16).copy(), sample_rate, words)

    def check_variant(self, voice: Voice) -> None:
        """espeak silently ignores an unknown `+variant`; a typo in a voice list must not go unnoticed."""
        _, _, variant = voice.name.partition("+")
        if variant and not Path(self.data_path, "voices", "!v", variant).is_file():
            known = sorted(p.name for p in Path(self.data_path, "voices", "!v").iterdir())
            raise EspeakError(
                f"espeak has no voice variant {variant!r} (in {voice.name!r}); known: {', '.join(known)}"
            )

    def close(self) -> None:
        if self._server is not None:
            self._server.stdin.close()
            self._server.wait(timeout=10)
            self._server = None

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()

    def _running_server(self) -> subprocess.Popen:
        if self._server is None or self._server.poll() is not None:
            self._server = subprocess.Popen(
                [sys.executable, "-P", __file__, self.library_path, self.data_path],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
        return self._server


def _speak(
    lib: ctypes.CDLL, libc: ctypes.CDLL, data_path: str, request: dict
) -> tuple[int, int, bytes, bytes]:
    """In a fresh child: initialize espeak, speak one phrase.

    Returns (sample rate, error, packed word events, pcm bytes).
    """
    sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), 0)
    if sample_rate <= 0:
        return 0, -1, b"", b""
    pieces: list[bytes] = []
    words: list[bytes] = []

    def collect(wav, count, events):
        if count > 0:
            pieces.append(ctypes.string_at(wav, count * 2))
        index = 0
        while events and events[index].type != _EVENT_LIST_TERMINATED:
            event = events[index]
            if event.type == _EVENT_WORD:
                words.append(_WORD_EVENT.pack(event.text_position - 1, event.length, event.sample))
            index += 1
        return 0

    callback = _SynthCallback(collect)
    lib.espeak_SetSynthCallback(callback)
    error = lib.espeak_SetVoiceByName(request["name"].encode())
    for parameter, value in (
        (_PARAM_RATE, request["rate"]),
        (_PARAM_PITCH, request["pitch"]),
        (_PARAM_RANGE, request["pitch_range"]),
        (_PARAM_VOLUME, 100),
    ):
        error = error or lib.espeak_SetParameter(parameter, value, 0)
    if error == 0:
        # Initialization seeds espeak's own generator (and rand) from the clock; fix both.
        libc.srand(0)
        if hasattr(lib, "espeak_ng_SetRandSeed"):  # espeak-ng >= 1.52
            lib.espeak_ng_SetRandSeed(ctypes.c_long(0))
        encoded = request["text"].encode("utf-8")
        error = lib.espeak_Synth(encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        error = error or lib.espeak_Synchronize()
    return sample_rate, error, b"".join(words), b"".join(pieces)


def _serve(library_path: str, data_path: str) -> None:
    """Helper process: one JSON request per stdin line, one framed reply per request on stdout.

    A reply: int32 sample rate, error, word count, pcm bytes; the word events; the pcm.
    """
    lib = ctypes.CDLL(library_path)
    libc = ctypes.CDLL(None)
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            with os.fdopen(write_end, "wb") as pipe:
                sample_rate, error, words, pcm = _speak(lib, libc, data_path, json.loads(line))
                count = len(words) // _WORD_EVENT.size
                pipe.write(struct.pack("<iii", sample_rate, error, count) + words + pcm)
            os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            reply = pipe.read()
        os.waitpid(pid, 0)
        if len(reply) < 12:
            reply = struct.pack("<iii", 0, -2, 0)
        count = struct.unpack("<i", reply[8:12])[0]
        pcm_at = 12 + count * _WORD_EVENT.size
        out.write(reply[:12] + struct.pack("<i", len(reply) - pcm_at) + reply[12:])
        out.flush()


if __name__ == "__main__":
    _serve(sys.argv[1], sys.argv[2])
