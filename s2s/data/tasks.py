"""What is said in a synthetic dialogue: the task maps a random user request to the system's answer.

The dialogue generator (synth.py) owns timing, voices, pauses and barge-ins; a task only decides
the words. A new task is one config file (`configs/task/*.yaml`) that instantiates one of these
classes with other words and voices, or names a new class of its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from s2s.data.espeak import Voice

ENGLISH_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
GERMAN_DIGITS = ("null", "eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun")


@dataclass(frozen=True)
class Exchange:
    """The words of one exchange: the user's request and the system's reply."""

    user_words: tuple[str, ...]
    reply_words: tuple[str, ...]


class DialogueTask:
    """Base of all tasks. Subclasses set the fields below and implement `sample`."""

    name: str
    system_voice: Voice
    barge_in_words: tuple[str, ...]

    def sample(self, rng: np.random.Generator) -> Exchange:
        raise NotImplementedError

    def describe(self) -> dict:
        """Everything that determines the words, for the corpus record (a changed task = a new corpus)."""
        raise NotImplementedError


@dataclass(frozen=True)
class DigitsTask(DialogueTask):
    """The user says a few digits; the system says them back in its own words.

    `user_digit_words` / `system_digit_words` name the digits 0-9 in the user's and the system's
    language; `order` is "same" (repeat / translate) or "reversed" (say them backwards).
    """

    name: str
    user_digit_words: Sequence[str]
    system_digit_words: Sequence[str]
    system_voice: Voice | Mapping
    min_digits: int = 1
    max_digits: int = 4
    order: str = "same"
    barge_in_words: Sequence[str] = field(default=("stop", "wait"))

    def __post_init__(self):
        for attribute in ("user_digit_words", "system_digit_words", "barge_in_words"):
            object.__setattr__(self, attribute, tuple(getattr(self, attribute)))
        if isinstance(self.system_voice, Mapping):
            fields = {key: value for key, value in self.system_voice.items() if key != "_target_"}
            object.__setattr__(self, "system_voice", Voice(**fields))
        for attribute in ("user_digit_words", "system_digit_words"):
            if len(getattr(self, attribute)) != 10:
                raise ValueError(f"task {self.name!r}: {attribute} must name the ten digits 0-9")
        if not 1 <= self.min_digits <= self.max_digits:
            raise ValueError(
                f"task {self.name!r}: need 1 <= min_digits <= max_digits, "
                f"got {self.min_digits}..{self.max_digits}"
            )
        if self.order not in ("same", "reversed"):
            raise ValueError(f"task {self.name!r}: order must be 'same' or 'reversed', got {self.order!r}")
        if not self.barge_in_words:
            raise ValueError(f"task {self.name!r}: barge_in_words may not be empty")

    def sample(self, rng: np.random.Generator) -> Exchange:
        count = int(rng.integers(self.min_digits, self.max_digits + 1))
        digits = [int(d) for d in rng.integers(0, 10, size=count)]
        answer = digits[::-1] if self.order == "reversed" else digits
        return Exchange(
            user_words=tuple(self.user_digit_words[d] for d in digits),
            reply_words=tuple(self.system_digit_words[d] for d in answer),
        )

    def describe(self) -> dict:
        return {
            "class": type(self).__name__,
            "name": self.name,
            "user_digit_words": list(self.user_digit_words),
            "system_digit_words": list(self.system_digit_words),
            "system_voice": vars(self.system_voice).copy(),
            "min_digits": self.min_digits,
            "max_digits": self.max_digits,
            "order": self.order,
            "barge_in_words": list(self.barge_in_words),
        }


def say_in_german() -> DigitsTask:
    """The default task (configs/task/say_in_german.yaml holds the same values)."""
    return DigitsTask(
        name="say_in_german",
        user_digit_words=ENGLISH_DIGITS,
        system_digit_words=GERMAN_DIGITS,
        system_voice=Voice(name="de+m3", rate=165, pitch=45, pitch_range=50),
    )
