"""The recognizer's self-describing artifact: weights, vocabulary, log-mel, task, hyperparameters, figures.

It is plain data and tensors, saved with torch.save and read with `torch.load(weights_only=True)`,
so loading one never runs code from the file: a file that holds anything else is refused.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import asdict
from pathlib import Path

import torch

from s2s.data.features import LogMelConfig
from s2s.recognizer.model import CTCRecognizer, RecognizerConfig
from s2s.recognizer.recognizer import Recognizer
from s2s.recognizer.vocabulary import Vocabulary

FORMAT = "s2s-recognizer"
VERSION = 1
TRAIN_HINT = (
    "train one with `python scripts/train_recognizer.py` (it writes outputs/recognizer/<run>/recognizer.pt)"
)


class RecognizerArtifactError(RuntimeError):
    """A file that is not a loadable recognizer artifact; the message says why and what to do."""


def save_recognizer(
    path: str | os.PathLike,
    model: CTCRecognizer,
    vocabulary: Vocabulary,
    log_mel_config: LogMelConfig,
    task: dict,
    figures: dict | None = None,
    training: dict | None = None,
) -> Path:
    """Write atomically (beside the target, then rename); returns the path."""
    if model.config.classes != vocabulary.size:
        raise ValueError(f"model has {model.config.classes} classes, the vocabulary {vocabulary.size}")
    record = {
        "format": FORMAT,
        "version": VERSION,
        "vocabulary": list(vocabulary.words),
        "blank": 0,
        "log_mel": asdict(log_mel_config),
        "task": task,
        "model": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "figures": figures or {},
        "training": training or {},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(record, partial)
    os.replace(partial, path)
    return path


def read_artifact(path: str | os.PathLike) -> dict:
    """The artifact's record, checked: format, version and fields. Never executes code from the file."""
    path = Path(path)
    if not path.is_file():
        raise RecognizerArtifactError(f"recognizer artifact {path} does not exist; {TRAIN_HINT}")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise RecognizerArtifactError(
            f"refusing to load {path}: it holds objects other than plain data and tensors, which loading "
            f"would have to execute ({str(error).splitlines()[0]}); a recognizer artifact never does. "
            f"Use a file written by save_recognizer, or {TRAIN_HINT}"
        ) from error
    except Exception as error:  # torch.load raises many kinds on foreign or truncated files
        raise RecognizerArtifactError(
            f"{path} is not a readable torch file ({error}); it may be truncated: {TRAIN_HINT}"
        ) from error
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        hint = (
            " (a Lightning checkpoint? use <run>/recognizer.pt)"
            if isinstance(record, dict) and ("state_dict" in record and "format" not in record)
            else ""
        )
        raise RecognizerArtifactError(
            f"{path} is not a recognizer artifact (format {found!r}, expected {FORMAT!r}){hint}; {TRAIN_HINT}"
        )
    if record.get("version") != VERSION:
        raise RecognizerArtifactError(
            f"{path} is a recognizer artifact of version {record.get('version')!r}; this code reads version "
            f"{VERSION}. Retrain it with this code: {TRAIN_HINT}"
        )
    missing = [k for k in ("vocabulary", "log_mel", "task", "model", "state_dict") if k not in record]
    if missing:
        raise RecognizerArtifactError(f"{path} lacks {missing}: it is damaged; {TRAIN_HINT}")
    return record


def load_recognizer(path: str | os.PathLike, device: str | torch.device = "cpu") -> Recognizer:
    record = read_artifact(path)
    try:
        vocabulary = Vocabulary(tuple(record["vocabulary"]))
        model = CTCRecognizer(RecognizerConfig.from_dict(record["model"]))
        model.load_state_dict(record["state_dict"])
        log_mel = LogMelConfig(**record["log_mel"])
    except (TypeError, ValueError, RuntimeError, KeyError) as error:
        raise RecognizerArtifactError(
            f"{path} does not describe a consistent recognizer ({error}); {TRAIN_HINT}"
        ) from error
    return Recognizer(
        model,
        vocabulary,
        log_mel,
        record["task"],
        figures=record.get("figures"),
        source=str(path),
        device=device,
    )
