"""Synthetic full-duplex dialogues: a user and a system on one timeline, with real turn-taking events.

One dialogue is a pure function of (corpus seed, split, index): its random generator is seeded
from those three numbers, and every phrase is synthesized in a fresh espeak process (espeak.py).
So any subset of a corpus can be made on any number of processes, in any order, and the files
come out byte-identical.

An exchange: the user speaks a request (sometimes with an internal pause, phrased with a rising
"continue" comma so the pause is audibly not an end of turn); 0.2-0.6 s after the turn ends the
system answers (in a recipe's `late_reply_probability` of exchanges later, 0.8-1.5 s); sometimes
the user barges in during the answer and the system falls silent within a fraction of a second;
the next exchange follows after a gap.

Every word's start comes from espeak's word events, carried through resampling, trimming and
placement; a word ends where the next one starts or where its phrase's audio ends. A cut-off reply
keeps the words that started before it began to fade; the last of them ends where the audio ends.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
import torchaudio

from s2s.data.espeak import Espeak, EspeakError, Voice
from s2s.data.manifest import SYSTEM, USER, Manifest, Segment, Word
from s2s.data.tasks import DialogueTask

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DialogueTiming:
    """Seconds. Pairs are uniform ranges (low, high)."""

    seconds: tuple[float, float] = (20.0, 60.0)  # dialogue length
    lead_in: tuple[float, float] = (0.3, 1.5)  # silence before the first user turn
    reply_delay: tuple[float, float] = (0.2, 0.6)  # user end of turn -> system reply onset
    # Replies that start late, from `late_reply_delay` instead. Why: when every reply starts within
    # 0.6 s, a silence that outlasts 0.6 s with no reply begun is always a pause inside the turn, and a
    # model trained on that data learns never to answer once it has let 0.6 s pass (the trap its own
    # missed onsets lead it into, free-running). A few late replies, starting only once the longest
    # pause would have ended, teach it to answer then instead without making a pause look like an
    # end. 0 (the default) draws nothing: corpora and splits without it stay byte-identical.
    late_reply_probability: float = 0.0
    late_reply_delay: tuple[float, float] = (0.8, 1.5)  # from the longest pause on: no new ambiguity
    pause_probability: float = 0.25  # turns of >= 2 words with an internal pause
    pause: tuple[float, float] = (0.3, 0.8)
    barge_in_probability: float = 0.15  # replies the user interrupts
    barge_in_point: tuple[float, float] = (0.2, 0.7)  # where in the reply the user starts, as a fraction
    stop_reaction: tuple[float, float] = (0.05, 0.2)  # barge-in onset -> system starts fading out
    fade: float = 0.02  # fade-out length; reaction + fade stays below 0.25 s
    next_turn_gap: tuple[float, float] = (0.6, 2.0)  # end of an exchange -> next user turn
    tail: float = 0.5  # minimum silence at the end of a dialogue

    def __post_init__(self):
        for name, value in asdict(self).items():
            if isinstance(value, tuple | list) and not 0 <= value[0] <= value[1]:
                raise ValueError(
                    f"timing.{name} must be a range (low, high) with 0 <= low <= high, got {value}"
                )
        for name in ("pause_probability", "barge_in_probability", "late_reply_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"timing.{name} must be a probability, got {getattr(self, name)}")
        if self.stop_reaction[1] + self.fade > 0.25:
            raise ValueError(
                "timing.stop_reaction high + fade must stay <= 0.25 s (the system stops within 0.25 s)"
            )


@dataclass(frozen=True)
class UserVoices:
    """The pool of user voices: every language x variant, with randomized delivery per dialogue.

    `held_out_variants` never speak in train or val; a `test_held_out_fraction` of the test
    dialogues (every other one by default) take their user voice from them, so test measures
    generalization to unseen speakers next to seen ones. `val_held_out_variants` (none by default)
    never speak in train or test; a `val_held_out_fraction` of the val dialogues take theirs from
    them, so what is chosen on val (the checkpoint, the state gain) meets unseen speakers as test
    does, without meeting test's.
    """

    languages: tuple[str, ...] = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc")
    variants: tuple[str, ...] = (
        "m1", "m2", "m3", "m4", "m5", "m6", "f1", "f2", "f3", "f4", "klatt", "klatt2", "klatt3",
        "Alex", "Andy", "Annie", "Denis", "Gene", "Jacky", "Lee", "Mario", "Michael", "Mike", "adam",
        "anika", "belinda", "benjamin", "caleb", "david", "ed", "edward", "grandma", "grandpa", "ian",
        "iven", "john", "linda", "max", "norbert", "paul", "quincy", "rob", "robert", "shelby",
        "steph", "travis", "victor", "zac",
    )  # fmt: skip
    held_out_variants: tuple[str, ...] = (
        "m7", "f5", "klatt4", "Andrea", "aunty", "boris", "gustave", "iven2", "steph2", "michel",
    )  # fmt: skip
    test_held_out_fraction: float = 0.5
    val_held_out_variants: tuple[str, ...] = ()
    val_held_out_fraction: float = 0.0
    rate: tuple[int, int] = (140, 210)
    pitch: tuple[int, int] = (25, 75)
    pitch_range: tuple[int, int] = (30, 80)
    level_db: tuple[float, float] = (-12.0, -2.0)  # peak level of each user phrase, dBFS

    def __post_init__(self):
        overlap = set(self.variants) & (set(self.held_out_variants) | set(self.val_held_out_variants))
        if overlap:
            raise ValueError(
                f"voices held out of training may not also be training voices: {sorted(overlap)}"
            )
        shared = set(self.held_out_variants) & set(self.val_held_out_variants)
        if shared:
            raise ValueError(
                f"val's held-out voices may not also be test's: {sorted(shared)} (test would no longer be "
                "unseen by the choices made on val)"
            )
        for split in ("test", "val"):
            fraction = getattr(self, f"{split}_held_out_fraction")
            if not 0.0 <= fraction <= 1.0:
                raise ValueError(f"{split}_held_out_fraction must be in [0, 1], got {fraction}")
        if self.val_held_out_fraction > 0 and not self.val_held_out_variants:
            raise ValueError(
                "val_held_out_fraction > 0 needs val_held_out_variants (voices in neither train nor test)"
            )
        if not self.languages or not self.variants:
            raise ValueError("the user voice pool needs at least one language and one variant")


@dataclass(frozen=True)
class CorpusConfig:
    out_dir: str = "data/synth"
    seed: int = 1234
    hours: dict = field(default_factory=lambda: {"train": 2.0, "val": 0.2, "test": 0.2})
    sample_rate: int = 16000
    system_level_db: float = -3.0
    user_noise_db: float | None = None  # white noise on the user channel (dBFS RMS), None for none
    timing: DialogueTiming = field(default_factory=DialogueTiming)
    voices: UserVoices = field(default_factory=UserVoices)
    # Per-split changes to `timing`, e.g. {"train": {"pause_probability": 0.5}}: more of a rare event
    # to learn from in train while val and test keep the timing they are judged on (a split's
    # dialogues depend only on its own timing, so the others stay byte-identical).
    split_timing: dict = field(default_factory=dict)

    def __post_init__(self):
        unknown = set(self.hours) - set(SPLITS)
        if unknown:
            raise ValueError(f"corpus hours name unknown splits {sorted(unknown)}; splits are {SPLITS}")
        unknown = set(self.split_timing) - set(SPLITS)
        if unknown:
            raise ValueError(
                f"corpus split_timing names unknown splits {sorted(unknown)}; splits are {SPLITS}"
            )
        fields = set(asdict(self.timing))
        for split, changes in self.split_timing.items():
            wrong = set(changes) - fields
            if wrong:
                raise ValueError(
                    f"corpus split_timing.{split} names {sorted(wrong)}, which are not timing fields; "
                    f"use some of {sorted(fields)}"
                )
            self.timing_for(split)  # validates the changed ranges and probabilities
        if any(h < 0 for h in self.hours.values()):
            raise ValueError(f"corpus hours must be >= 0, got {self.hours}")
        if self.sample_rate not in (8000, 16000, 22050, 24000, 44100, 48000):
            raise ValueError(f"sample_rate {self.sample_rate} Hz is unusual; use 16000 (the model's rate)")

    @classmethod
    def from_dict(cls, values: dict) -> CorpusConfig:
        """Build from plain (e.g. Hydra/OmegaConf) values; nested groups become their dataclasses."""
        values = dict(values)
        if "timing" in values:
            values["timing"] = DialogueTiming(**{k: _tuple(v) for k, v in dict(values["timing"]).items()})
        if "voices" in values:
            values["voices"] = UserVoices(**{k: _tuple(v) for k, v in dict(values["voices"]).items()})
        if "hours" in values:
            values["hours"] = {k: float(v) for k, v in dict(values["hours"]).items()}
        if "split_timing" in values:
            values["split_timing"] = {
                split: {k: _tuple(v) for k, v in dict(changes or {}).items()}
                for split, changes in dict(values["split_timing"] or {}).items()
            }
            values["split_timing"] = {split: c for split, c in values["split_timing"].items() if c}
        return cls(**values)

    def timing_for(self, split: str) -> DialogueTiming:
        """The timing `split` is generated with: `timing` with that split's changes."""
        return replace(self.timing, **self.split_timing.get(split, {}))

    def record(self) -> dict:
        """What determines the audio (not where it is written), for corpus.json."""
        record = asdict(self)
        del record["out_dir"]
        if not record["split_timing"]:
            del record["split_timing"]  # corpora made before per-split timing keep their recipe
        if not record["voices"]["val_held_out_fraction"] and not record["voices"]["val_held_out_variants"]:
            del record["voices"]["val_held_out_fraction"]  # nor do those made before val's held-out voices
            del record["voices"]["val_held_out_variants"]
        if not record["timing"]["late_reply_probability"]:
            del record["timing"]["late_reply_probability"]  # nor do those made before late replies
            del record["timing"]["late_reply_delay"]
        return _jsonable(record)


@dataclass(frozen=True)
class DialogueJob:
    split: str
    index: int
    seconds: float

    @property
    def dialogue_id(self) -> str:
        return f"{self.split}_{self.index:05d}"


def dialogue_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Independent streams for every (seed, split, index): splits never share a dialogue."""
    return np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(split), index]))


def plan_split(config: CorpusConfig, split: str) -> list[DialogueJob]:
    """Dialogues of `split` until its hours are reached (lengths are each dialogue's first draw)."""
    jobs, total = [], 0.0
    target = config.hours.get(split, 0.0) * 3600.0
    while total < target:
        seconds = _draw_length(dialogue_rng(config.seed, split, len(jobs)), config.timing_for(split))
        jobs.append(DialogueJob(split, len(jobs), seconds))
        total += seconds
    return jobs


def _draw_length(rng: np.random.Generator, timing: DialogueTiming) -> float:
    return float(rng.uniform(*timing.seconds))


class DialogueSynthesizer:
    """Builds one dialogue's stereo audio and manifest from its job."""

    def __init__(self, config: CorpusConfig, task: DialogueTask, espeak: Espeak | None = None):
        self.config = config
        self.task = task
        self.espeak = espeak or Espeak()
        self.rate = config.sample_rate
        self._resamplers: dict[int, torchaudio.transforms.Resample] = {}

    def make(self, job: DialogueJob) -> tuple[np.ndarray, Manifest]:
        cfg, timing = self.config, self.config.timing_for(job.split)
        rng = dialogue_rng(cfg.seed, job.split, job.index)
        seconds = _draw_length(rng, timing)
        total = round(seconds * self.rate)
        user_voice, held_out = self._user_voice(rng, job)
        user_level = float(rng.uniform(*cfg.voices.level_db))
        tracks = np.zeros((2, total), dtype=np.float32)
        segments: list[Segment] = []

        cursor = self._samples(rng.uniform(*timing.lead_in))
        exchange = 0
        while True:
            planned = self._plan_exchange(rng, timing, user_voice, user_level, cursor)
            end = max(piece.end for piece in planned.pieces)
            if end + self._samples(timing.tail) > total:
                break
            for piece in planned.pieces:
                tracks[piece.channel, piece.start : piece.end] += piece.audio
            segments += [
                Segment(s.speaker, s.kind, s.start, s.end, s.text, exchange, self.rate, s.words)
                for s in planned.segments
            ]
            cursor = end + self._samples(rng.uniform(*timing.next_turn_gap))
            exchange += 1

        if cfg.user_noise_db is not None:
            tracks[0] += (10 ** (cfg.user_noise_db / 20) * rng.standard_normal(total)).astype(np.float32)
        segments.sort(key=lambda s: (s.start_sample, s.speaker))
        manifest = Manifest(
            dialogue_id=job.dialogue_id,
            sample_rate=self.rate,
            num_samples=total,
            segments=tuple(segments),
            info={
                "split": job.split,
                "seed": [cfg.seed, SPLITS.index(job.split), job.index],
                "task": self.task.name,
                "user_voice": {**asdict(user_voice), "held_out": held_out},
                "system_voice": asdict(self.task.system_voice),
            },
        )
        return tracks, manifest

    def _user_voice(self, rng: np.random.Generator, job: DialogueJob) -> tuple[Voice, bool]:
        voices = self.config.voices
        # Exactly `<split>_held_out_fraction` of test (val) dialogues, spread evenly by index, get a
        # voice unseen in training, from the split's own held-out variants.
        unseen = {"test": voices.held_out_variants, "val": voices.val_held_out_variants}.get(job.split, ())
        fraction = {"test": voices.test_held_out_fraction, "val": voices.val_held_out_fraction}.get(
            job.split, 0.0
        )
        held_out = bool(unseen) and int((job.index + 1) * fraction) > int(job.index * fraction)
        variants = unseen if held_out else voices.variants
        name = (
            f"{voices.languages[rng.integers(len(voices.languages))]}+{variants[rng.integers(len(variants))]}"
        )
        voice = Voice(
            name=name,
            rate=int(rng.integers(voices.rate[0], voices.rate[1] + 1)),
            pitch=int(rng.integers(voices.pitch[0], voices.pitch[1] + 1)),
            pitch_range=int(rng.integers(voices.pitch_range[0], voices.pitch_range[1] + 1)),
        )
        return voice, held_out

    def _plan_exchange(
        self, rng, timing: DialogueTiming, user_voice: Voice, user_level: float, start: int
    ) -> _PlannedExchange:
        words = self.task.sample(rng)
        plan = _PlannedExchange()

        # The user's turn, possibly in two parts around a pause.
        split_at = len(words.user_words)
        if len(words.user_words) >= 2 and rng.random() < timing.pause_probability:
            split_at = int(rng.integers(1, len(words.user_words)))
        parts = [words.user_words[:split_at], words.user_words[split_at:]]
        parts = [p for p in parts if p]
        cursor = start
        turn_start = start
        turn_words: list[Word] = []
        for number, part in enumerate(parts):
            last = number == len(parts) - 1
            text = " ".join(part) + ("." if last else ",")
            phrase = self._phrase(text, part, user_voice, user_level + float(rng.uniform(-1.0, 1.0)))
            audio = phrase.audio
            plan.add(0, cursor, audio)
            turn_words += phrase.timed_words(cursor)
            if not last:
                pause = self._samples(rng.uniform(*timing.pause))
                plan.segments.append(
                    _Span(USER, "pause", cursor + len(audio), cursor + len(audio) + pause, "", ())
                )
                cursor += pause
            cursor += len(audio)
        turn_end = cursor
        plan.segments.append(
            _Span(USER, "turn", turn_start, turn_end, " ".join(words.user_words), tuple(turn_words))
        )

        # The system's reply, possibly cut off by a barge-in.
        late = timing.late_reply_probability > 0 and rng.random() < timing.late_reply_probability
        delay = timing.late_reply_delay if late else timing.reply_delay
        reply_start = turn_end + self._samples(rng.uniform(*delay))
        reply_text = " ".join(words.reply_words)
        spoken = self._phrase(
            reply_text + ".", words.reply_words, self.task.system_voice, self.config.system_level_db
        )
        reply = spoken.audio
        if rng.random() < timing.barge_in_probability:
            onset = reply_start + self._samples(len(reply) / self.rate * rng.uniform(*timing.barge_in_point))
            word = self.task.barge_in_words[int(rng.integers(len(self.task.barge_in_words)))]
            shout = self._phrase(word + "!", (word,), user_voice, user_level + float(rng.uniform(0.0, 2.0)))
            interruption = shout.audio
            fade_start = onset + self._samples(rng.uniform(*timing.stop_reaction))
            fade = self._samples(timing.fade)
            kept = min(len(reply), fade_start + fade - reply_start)
            cut = reply[:kept].copy()
            ramp_from = fade_start - reply_start
            if ramp_from < kept:
                cut[ramp_from:] *= np.linspace(1.0, 0.0, kept - ramp_from, endpoint=False, dtype=np.float32)
            cut = _trim(cut, leading=False)
            plan.add(1, reply_start, cut)
            plan.add(0, onset, interruption)
            # Words that began before the fade are spoken; the last one ends where the audio ends.
            said = spoken.timed_words(reply_start, cut=len(cut), fade=ramp_from)
            plan.segments.append(
                _Span(SYSTEM, "cut-off reply", reply_start, reply_start + len(cut), reply_text, said)
            )
            plan.segments.append(
                _Span(USER, "barge-in", onset, onset + len(interruption), word, shout.timed_words(onset))
            )
        else:
            plan.add(1, reply_start, reply)
            plan.segments.append(
                _Span(
                    SYSTEM, "reply", reply_start, reply_start + len(reply), reply_text,
                    spoken.timed_words(reply_start),
                )
            )  # fmt: skip
        return plan

    def _phrase(self, text: str, words: tuple[str, ...], voice: Voice, level_db: float) -> _Phrase:
        """Speak, resample to the corpus rate, trim silence, and scale to a peak level in dBFS.

        `words` are the words `text` says (without its punctuation); their starts follow the audio.
        """
        speech = self.espeak.speak(text, voice)
        said = tuple(w.text for w in speech.words)
        if said != tuple(words):
            raise EspeakError(
                f"espeak reported the words {list(said)} for the phrase {text!r} (voice {voice.name!r}), "
                f"not {list(words)}: word times cannot be assigned; use words that espeak speaks one by one"
            )
        rate = speech.sample_rate
        audio = torch.from_numpy(speech.samples.astype(np.float32) / 32768.0)
        if rate != self.rate:
            if rate not in self._resamplers:  # the filter kernel costs more than applying it
                self._resamplers[rate] = torchaudio.transforms.Resample(rate, self.rate)
            audio = self._resamplers[rate](audio)
        audio = audio.numpy()
        first, end = _loud_span(audio)
        audio = audio[first:end]
        starts = tuple(max(0, round(w.start * self.rate / rate) - first) for w in speech.words)
        if list(starts) != sorted(set(starts)) or starts[-1] >= len(audio):
            raise EspeakError(
                f"espeak's word starts {starts} (samples at {self.rate} Hz after trimming) for {text!r} "
                f"(voice {voice.name!r}) are not increasing inside its {len(audio)} samples of speech"
            )
        peak = float(np.abs(audio).max())
        return _Phrase((audio * (10 ** (level_db / 20) / peak)).astype(np.float32), tuple(words), starts)

    def _samples(self, seconds: float) -> int:
        return round(seconds * self.rate)


@dataclass(frozen=True)
class _Phrase:
    """A phrase's audio at the corpus rate, its words, and each word's first sample in `audio`."""

    audio: np.ndarray
    words: tuple[str, ...]
    starts: tuple[int, ...]

    def timed_words(self, offset: int, cut: int | None = None, fade: int | None = None) -> tuple[Word, ...]:
        """The words placed at `offset` on the timeline. A reply cut off after `cut` samples that
        began to fade at `fade` says the words that started before both; the last ends at `cut`."""
        end = len(self.audio) if cut is None else min(cut, len(self.audio))
        last = end if fade is None else min(fade, end)
        kept = [i for i, start in enumerate(self.starts) if start < last]
        ends = [min(self.starts[i + 1], end) if i + 1 < len(self.starts) else end for i in kept]
        return tuple(
            Word(self.words[i], offset + self.starts[i], offset + ends[n]) for n, i in enumerate(kept)
        )


@dataclass
class _Span:
    speaker: str
    kind: str
    start: int
    end: int
    text: str
    words: tuple[Word, ...]


@dataclass
class _Piece:
    channel: int
    start: int
    audio: np.ndarray

    @property
    def end(self) -> int:
        return self.start + len(self.audio)


@dataclass
class _PlannedExchange:
    pieces: list[_Piece] = field(default_factory=list)
    segments: list[_Span] = field(default_factory=list)

    def add(self, channel: int, start: int, audio: np.ndarray) -> None:
        self.pieces.append(_Piece(channel, start, audio))


def _trim(audio: np.ndarray, leading: bool = True, threshold: float = 0.01) -> np.ndarray:
    """Cut the silence espeak puts around a phrase, so segment edges are where speech is."""
    first, end = _loud_span(audio, threshold)
    return audio[(first if leading else 0) : end]


def _loud_span(audio: np.ndarray, threshold: float = 0.01) -> tuple[int, int]:
    """[first, end) of the samples above `threshold` x the peak."""
    loud = np.flatnonzero(np.abs(audio) > threshold * max(float(np.abs(audio).max()), 1e-9))
    if loud.size == 0:
        raise ValueError("espeak produced a silent phrase")
    return int(loud[0]), int(loud[-1]) + 1


def _tuple(value):
    return tuple(value) if isinstance(value, list | tuple) or type(value).__name__ == "ListConfig" else value


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value
