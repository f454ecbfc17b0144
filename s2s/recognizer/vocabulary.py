"""The recognizer's output symbols: the CTC blank plus the words the task's system can say.

The task decides the words (configs/task/*.yaml -> the corpus record), so the vocabulary is read
from the task record in `<corpus>/corpus.json` (s2s/data/words.py), never from a list in code: a
recognizer for the echo task says "one two", for the default task "eins zwei".
"""

from __future__ import annotations

from dataclasses import dataclass

from s2s.data.manifest import SYSTEM
from s2s.data.words import VocabularyError, check_words, task_words

BLANK = "<blank>"

__all__ = ["BLANK", "Vocabulary", "VocabularyError", "vocabulary_from_task"]


@dataclass(frozen=True)
class Vocabulary:
    """Word-level CTC symbols: id 0 is the blank, ids 1..N are `words` in order."""

    words: tuple[str, ...]

    def __post_init__(self):
        object.__setattr__(self, "words", check_words(self.words, reserved=(BLANK,)))

    @property
    def size(self) -> int:
        """Number of CTC classes (words + blank)."""
        return len(self.words) + 1

    def encode(self, words: tuple[str, ...] | list[str] | str) -> list[int]:
        if isinstance(words, str):
            words = words.split()
        index = {w: i + 1 for i, w in enumerate(self.words)}
        unknown = [w for w in words if w not in index]
        if unknown:
            raise VocabularyError(
                f"words {unknown} are not in the recognizer's vocabulary {list(self.words)}; "
                "the corpus and the recognizer belong to different tasks"
            )
        return [index[w] for w in words]

    def decode(self, ids) -> list[str]:
        """Token ids (no blanks) -> words."""
        return [self.words[int(i) - 1] for i in ids]


def vocabulary_from_task(task: dict) -> Vocabulary:
    """The system's words of a task record (corpus.json's recipe["task"], `DialogueTask.describe()`).

    `system_words` (any task that lists them) or `system_digit_words` (DigitsTask); repeated words
    (a task may name two digits alike) appear once, in first-seen order.
    """
    return Vocabulary(task_words(task, SYSTEM))
