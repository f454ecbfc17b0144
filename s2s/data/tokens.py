"""The duplex model's token streams: vocabularies and the grammar of the system's tokens.

One token per model frame (the "inner monologue" of Moshi, the text channel of NeMo DuplexS2S):

    PAD PAD BOS sieben PAD PAD acht PAD EOS PAD ...

Ids 0, 1, 2 are PAD, BOS and EOS in every vocabulary; the task's words follow (s2s/data/words.py
reads them from the task record). The grammar: outside a reply only PAD or BOS; inside a reply
(after BOS) words, PAD or EOS. The system speaks on the frames strictly between BOS and EOS, so the
speaking flag is derived from the tokens, never predicted on its own. The user's stream uses the
same layout (its words are the user's and the barge-in words; it never holds BOS or EOS), and its
CTC targets use PAD's id 0 as the blank.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from s2s.data.manifest import SYSTEM
from s2s.data.words import VocabularyError, check_words, task_words

PAD, BOS, EOS = 0, 1, 2
SPECIALS = ("<pad>", "<bos>", "<eos>")


@dataclass(frozen=True)
class TokenVocabulary:
    """Token ids: PAD, BOS, EOS (0, 1, 2), then `words` from id 3 on."""

    words: tuple[str, ...]

    def __post_init__(self):
        object.__setattr__(self, "words", check_words(self.words, reserved=SPECIALS))

    @classmethod
    def from_task(cls, task: dict, speaker: str = SYSTEM) -> TokenVocabulary:
        """The vocabulary of `speaker` ("system" or "user") in a task record (corpus.json recipe.task)."""
        return cls(task_words(task, speaker))

    @property
    def size(self) -> int:
        return len(SPECIALS) + len(self.words)

    @property
    def first_word(self) -> int:
        return len(SPECIALS)

    def id(self, word: str) -> int:
        try:
            return len(SPECIALS) + self.words.index(word)
        except ValueError:
            raise VocabularyError(
                f"word {word!r} is not in the token vocabulary {list(self.words)}; the manifest and the "
                "vocabulary belong to different tasks (build it from the corpus's task record)"
            ) from None

    def encode(self, words: list[str] | tuple[str, ...] | str) -> list[int]:
        return [self.id(w) for w in (words.split() if isinstance(words, str) else words)]

    def decode(self, ids) -> list[str]:
        """Ids -> words and special names (`<pad>`, `<bos>`, `<eos>`)."""
        names = SPECIALS + self.words
        return [names[int(i)] for i in ids]


def reply_states(tokens: torch.Tensor, in_reply: torch.Tensor | bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Whether each frame is inside a reply before and after its token.

    `tokens` (..., T) ids; `in_reply` (...) the state before the first frame (carried from the
    previous chunk or crop). BOS opens a reply and EOS closes it; other tokens keep the state.
    Returns (before, after), bool (..., T).
    """
    in_reply = torch.as_tensor(in_reply, dtype=torch.bool, device=tokens.device).expand(tokens.shape[:-1])
    steps = torch.arange(tokens.shape[-1], device=tokens.device).expand_as(tokens)
    marked = (tokens == BOS) | (tokens == EOS)
    last = torch.where(marked, steps, -1).cummax(dim=-1).values  # the last BOS/EOS at or before t
    after = torch.where(last >= 0, tokens.gather(-1, last.clamp(min=0)) == BOS, in_reply.unsqueeze(-1))
    before = torch.cat([in_reply.unsqueeze(-1), after[..., :-1]], dim=-1)
    return before, after


def speaking_from_tokens(tokens: torch.Tensor, in_reply: torch.Tensor | bool) -> torch.Tensor:
    """The system speaks on the frames strictly between BOS and EOS: inside a reply before and after."""
    before, after = reply_states(tokens, in_reply)
    return before & after


def grammar_errors(tokens: torch.Tensor, in_reply: torch.Tensor | bool) -> torch.Tensor:
    """Frames whose token the grammar forbids (bool, like `tokens`): BOS inside a reply, EOS or a word
    outside one."""
    before, _ = reply_states(tokens, in_reply)
    return torch.where(before, tokens == BOS, (tokens != PAD) & (tokens != BOS))
