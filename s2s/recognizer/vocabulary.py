"""The recognizer's output symbols: the CTC blank plus the words the task's system can say.

The task decides the words (configs/task/*.yaml -> the corpus record), so the vocabulary is read
from the task record in `<corpus>/corpus.json`, never from a list in code: a recognizer for the
echo task says "one two", for the default task "eins zwei".
"""

from __future__ import annotations

from dataclasses import dataclass

BLANK = "<blank>"


class VocabularyError(ValueError):
    """A task record the vocabulary cannot be read from, or a word outside the vocabulary."""


@dataclass(frozen=True)
class Vocabulary:
    """Word-level CTC symbols: id 0 is the blank, ids 1..N are `words` in order."""

    words: tuple[str, ...]

    def __post_init__(self):
        object.__setattr__(self, "words", tuple(self.words))
        if not self.words:
            raise VocabularyError("a vocabulary needs at least one word")
        if len(set(self.words)) != len(self.words):
            raise VocabularyError(f"vocabulary words must be distinct, got {self.words}")
        bad = [w for w in self.words if not w or w != w.strip() or " " in w or w == BLANK]
        if bad:
            raise VocabularyError(f"vocabulary words must be single non-empty tokens, got {bad}")

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
    if not isinstance(task, dict):
        raise VocabularyError(f"a task record is a dict (corpus.json recipe.task), got {type(task).__name__}")
    for key in ("system_words", "system_digit_words"):
        if key in task:
            words = task[key]
            if not isinstance(words, list | tuple) or not all(isinstance(w, str) for w in words):
                raise VocabularyError(f"task record field {key!r} must be a list of words, got {words!r}")
            return Vocabulary(tuple(dict.fromkeys(words)))
    raise VocabularyError(
        f"task record {task.get('name', '?')!r} (class {task.get('class', '?')!r}) names no system words "
        "(fields 'system_words' or 'system_digit_words'); the recognizer's vocabulary comes from them"
    )
