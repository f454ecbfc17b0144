"""The trained recognizer as the evaluation uses it: audio or log-mel windows in, words out."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torchaudio

from s2s.data.features import LogMel, LogMelConfig
from s2s.recognizer.decode import greedy_ctc_decode
from s2s.recognizer.model import CTCRecognizer
from s2s.recognizer.vocabulary import Vocabulary, vocabulary_from_task

# Task record fields that decide what the system channel says and sounds like. Others (the task's
# name, the user's words, the reply order, the barge-in words) do not change what this recognizer
# hears: a recognizer of the default task also reads the `reverse` task's replies.
TASK_FIELDS = ("class", "system_words", "system_digit_words", "system_voice", "min_digits", "max_digits")


class TaskMismatchError(ValueError):
    """The recognizer was trained for another task than the corpus it is asked to judge."""


class Recognizer:
    def __init__(
        self,
        model: CTCRecognizer,
        vocabulary: Vocabulary,
        log_mel_config: LogMelConfig,
        task: dict,
        figures: dict | None = None,
        source: str = "<memory>",
        device: str | torch.device = "cpu",
        batch_size: int = 64,
    ):
        if model.config.classes != vocabulary.size:
            raise ValueError(
                f"recognizer model has {model.config.classes} classes; its vocabulary needs {vocabulary.size}"
            )
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.vocabulary = vocabulary
        self.log_mel_config = log_mel_config
        self.log_mel = LogMel(log_mel_config).to(self.device)
        self.task = task
        self.figures = figures or {}
        self.source = source
        self.batch_size = batch_size

    def check_task(self, task_record: dict) -> None:
        """Refuse a corpus whose task (corpus.json's recipe.task, or the whole corpus.json) differs
        from the recognizer's in any of TASK_FIELDS or in vocabulary."""
        if isinstance(task_record, dict) and "recipe" in task_record:
            task_record = task_record["recipe"].get("task", {})
        if not isinstance(task_record, dict):
            raise TaskMismatchError(f"expected a task record (dict), got {type(task_record).__name__}")
        differences = [
            f"{key} (recognizer: {self.task.get(key)!r}, corpus: {task_record.get(key)!r})"
            for key in TASK_FIELDS
            if self.task.get(key) != task_record.get(key)
        ]
        try:
            corpus_words = vocabulary_from_task(task_record).words
        except ValueError as error:
            corpus_words = f"unreadable ({error})"
        if corpus_words != self.vocabulary.words and not differences:
            differences.append(
                f"vocabulary (recognizer: {list(self.vocabulary.words)}, corpus: {corpus_words})"
            )
        if differences:
            raise TaskMismatchError(
                f"recognizer {self.source} was trained for task {self.task.get('name')!r} but the "
                f"corpus's task is {task_record.get('name')!r}; they differ in: {'; '.join(differences)}. "
                "Train one on this corpus: `python scripts/train_recognizer.py data_dir=<corpus folder>`"
            )

    @torch.no_grad()
    def transcribe(
        self, audio_windows: Sequence[np.ndarray | torch.Tensor], sample_rate: int = 16000
    ) -> list[list[str]]:
        """Mono windows (samples,) at `sample_rate` -> the words heard in each."""
        signals = []
        for i, audio in enumerate(audio_windows):
            audio = torch.as_tensor(np.asarray(audio) if not isinstance(audio, torch.Tensor) else audio)
            if audio.dim() != 1:
                raise ValueError(f"audio window {i} must be mono (samples,), got shape {tuple(audio.shape)}")
            audio = audio.float()
            if not bool(torch.isfinite(audio).all()):
                raise ValueError(f"audio window {i} holds NaN or infinite samples")
            if sample_rate != self.log_mel_config.sample_rate:
                audio = torchaudio.functional.resample(audio, sample_rate, self.log_mel_config.sample_rate)
            signals.append(audio)
        mels = []
        for first in range(0, len(signals), self.batch_size):
            batch = signals[first : first + self.batch_size]
            padded = torch.nn.utils.rnn.pad_sequence(batch, batch_first=True).to(self.device)
            frames = self.log_mel(padded)  # causal: right padding leaves each window's frames unchanged
            mels += [frames[row, : self.log_mel_config.frames_for(s.shape[0])] for row, s in enumerate(batch)]
        return self.transcribe_log_mel(mels)

    @torch.no_grad()
    def transcribe_log_mel(self, mels: Sequence[np.ndarray | torch.Tensor]) -> list[list[str]]:
        """Log-mel windows (frames, n_mels) of this recognizer's `log_mel_config` -> words."""
        n_mels = self.log_mel_config.n_mels
        tensors = []
        for i, mel in enumerate(mels):
            mel = torch.as_tensor(mel).float()
            if mel.dim() != 2 or mel.shape[1] != n_mels:
                raise ValueError(f"log-mel window {i} must be (frames, {n_mels}), got {tuple(mel.shape)}")
            tensors.append(mel)
        words: list[list[str]] = [[] for _ in tensors]
        order = [i for i in sorted(range(len(tensors)), key=lambda i: tensors[i].shape[0]) if len(tensors[i])]
        for first in range(0, len(order), self.batch_size):
            rows = order[first : first + self.batch_size]
            batch = torch.nn.utils.rnn.pad_sequence([tensors[i] for i in rows], batch_first=True)
            lengths = torch.tensor([tensors[i].shape[0] for i in rows])
            log_probs, out_lengths = self.model(batch.to(self.device), lengths)
            for row, ids in zip(rows, greedy_ctc_decode(log_probs, out_lengths), strict=True):
                words[row] = self.vocabulary.decode(ids)
        return words

    def __repr__(self) -> str:
        return (
            f"Recognizer({self.source}, task {self.task.get('name')!r}, {len(self.vocabulary.words)} words, "
            f"{self.model.parameter_count():,} parameters, {self.device})"
        )
