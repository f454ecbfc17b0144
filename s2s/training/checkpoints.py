"""Finding and checking the checkpoint a re-launched run resumes from."""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from, with what to do about it."""


def resume_checkpoint(run_dir: str | Path) -> Path | None:
    """`<run_dir>/checkpoints/last.ckpt` when a previous launch of this run left one."""
    path = Path(run_dir) / "checkpoints" / "last.ckpt"
    return path if path.is_file() else None


def check_checkpoint(path: str | Path) -> int:
    """Load `path` on the CPU and return its global step, or raise CheckpointError naming the fix."""
    return int(load_checkpoint(path)["global_step"])


def load_checkpoint(path: str | Path) -> dict:
    """The checkpoint's contents (on the CPU), checked to be a readable Lightning training checkpoint."""
    path = Path(path)
    fix = f"delete {path} to restart the run from scratch, or pass resume=false"
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as error:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({error}); {fix}") from error
    missing = [key for key in ("global_step", "state_dict", "optimizer_states") if key not in state]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} lacks {missing}: it is not a Lightning training checkpoint; {fix}"
        )
    return state
