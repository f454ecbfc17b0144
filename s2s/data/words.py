"""The words a task's speakers say, read from the task record.

The task decides the words (configs/task/*.yaml -> `DialogueTask.describe()` -> corpus.json's
recipe["task"]), so every vocabulary (the recognizer's, the duplex model's token streams) is read
from that record, never from a list in code: for the echo task the system says "one two", for the
default task "eins zwei".
"""

from __future__ import annotations

from collections.abc import Iterable

from s2s.data.manifest import SYSTEM, USER

# Record fields that list a speaker's words, in the order they are looked for: a task may name its
# words directly (`*_words`) or as the ten digits of a DigitsTask (`*_digit_words`).
_FIELDS = {SYSTEM: ("system_words", "system_digit_words"), USER: ("user_words", "user_digit_words")}


class VocabularyError(ValueError):
    """A task record the words cannot be read from, or a word outside a vocabulary."""


def check_words(words: Iterable[str], reserved: Iterable[str] = ()) -> tuple[str, ...]:
    """`words` as a tuple, refused unless they are distinct single tokens other than `reserved` names."""
    words = tuple(words)
    if not words:
        raise VocabularyError("a vocabulary needs at least one word")
    if len(set(words)) != len(words):
        raise VocabularyError(f"vocabulary words must be distinct, got {words}")
    reserved = set(reserved)
    bad = [w for w in words if not isinstance(w, str) or not w or w != w.strip() or " " in w or w in reserved]
    if bad:
        raise VocabularyError(
            f"vocabulary words must be single non-empty tokens other than {sorted(reserved)}, got {bad}"
        )
    return words


def task_words(task: dict, speaker: str = SYSTEM) -> tuple[str, ...]:
    """The words `speaker` says in a task record; repeated words once, in first-seen order.

    The system: `system_words` or `system_digit_words`. The user: `user_words` or
    `user_digit_words`, then the `barge_in_words` it interrupts with.
    """
    if speaker not in _FIELDS:
        raise VocabularyError(f"speaker must be {USER!r} or {SYSTEM!r}, got {speaker!r}")
    if not isinstance(task, dict):
        raise VocabularyError(f"a task record is a dict (corpus.json recipe.task), got {type(task).__name__}")
    words = None
    for key in _FIELDS[speaker]:
        if key in task:
            words = _word_list(task, key)
            break
    if words is None:
        names = " or ".join(repr(key) for key in _FIELDS[speaker])
        raise VocabularyError(
            f"task record {task.get('name', '?')!r} (class {task.get('class', '?')!r}) names no {speaker} "
            f"words (fields {names}); vocabularies come from them"
        )
    if speaker == USER and "barge_in_words" in task:
        words += _word_list(task, "barge_in_words")
    return tuple(dict.fromkeys(words))


def _word_list(task: dict, key: str) -> list[str]:
    words = task[key]
    if not isinstance(words, list | tuple) or not all(isinstance(w, str) for w in words):
        raise VocabularyError(f"task record field {key!r} must be a list of words, got {words!r}")
    return list(words)
