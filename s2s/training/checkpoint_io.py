"""Checkpoint files that a kill can never leave half-written, read back without running code.

Lightning's own writer stages the file in `$TMPDIR` and moves it into place; when `$TMPDIR` is on
another filesystem that move is a copy, so a kill mid-copy truncates `last.ckpt` and leaves the
staged file behind. Here the temporary file sits beside its target (same filesystem), is fsynced,
and replaces the target with one atomic rename. Every checkpoint Lightning reads (resume included)
goes through `load_checkpoint`: `weights_only=True`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.plugins.io import TorchCheckpointIO

from s2s.training.checkpoints import load_checkpoint

TEMP_MARK = ".tmp-"  # `<name>.tmp-<pid>`: a checkpoint being written


class RunCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO with atomic local saves and safe loads (the Trainer's `plugins=[...]`)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            return super().save_checkpoint(checkpoint, path, storage_options)  # remote: Lightning's way
        atomic_save(checkpoint, Path(path))

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict:
        return load_checkpoint(path)  # always weights_only=True, whatever the caller asked for


def atomic_save(obj: Any, path: Path) -> None:
    """`torch.save` to `<path>.tmp-<pid>` beside `path`, fsync, rename over `path`, fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f"{path.name}{TEMP_MARK}{os.getpid()}")
    try:
        with open(temp, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself survives a power cut
    finally:
        os.close(folder)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete checkpoint temporaries a killed launch left in `folder` (call while holding the run lock)."""
    folder = Path(folder)
    stale = sorted(folder.glob(f"*.ckpt{TEMP_MARK}*")) if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
