"""Reading checkpoints safely, and finding the one a re-launched run resumes from.

A checkpoint is read with `torch.load(weights_only=True)`: tensors and plain data only, so a file
from someone else can never run code on load. What s2s training saves (Lightning's state, the
model's config as a plain dict) needs nothing beyond torch's own allow-list; a file that holds
any other Python object is refused, not executed.
"""

from __future__ import annotations

import pickle
import re
import struct
import zipfile
from pathlib import Path

import torch

CHECKPOINT_KEYS = ("global_step", "state_dict", "optimizer_states")
DEFAULT_FIX = "use a checkpoint written by scripts/train.py (`<run dir>/checkpoints/*.ckpt`)"
RESUME_FIX = "pass resume=false to start this run over, or run_name=<another name> for a separate run"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used, with what to do about it."""


def resume_checkpoint(run_dir: str | Path) -> Path | None:
    """`<run_dir>/checkpoints/last.ckpt` when a previous launch of this run left one."""
    path = Path(run_dir) / "checkpoints" / "last.ckpt"
    return path if path.is_file() else None


def check_checkpoint(path: str | Path, fix: str | None = None) -> int:
    """Load `path` on the CPU and return its global step, or raise CheckpointError naming the fix
    (by default, the fix for a run resuming from it)."""
    return int(load_checkpoint(path, fix=fix or RESUME_FIX)["global_step"])


def load_checkpoint(path: str | Path, fix: str | None = None) -> dict:
    """The checkpoint's contents (on the CPU), checked to be a readable Lightning training checkpoint.

    Only tensors and plain data are read (`weights_only=True`). `fix` is the advice appended to
    errors about the file's contents (default: use a checkpoint written by scripts/train.py).
    """
    path = Path(path)
    fix = fix or DEFAULT_FIX
    if not path.exists():
        raise CheckpointError(
            f"checkpoint {path} does not exist; check the path (a run keeps its checkpoints in "
            "outputs/train/<run_name>/checkpoints/: last.ckpt and best-*.ckpt)"
        )
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory; pass one of the .ckpt files in it")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        blocked = _unsafe_globals(path, error)
        if blocked:
            raise CheckpointError(
                f"refusing to load checkpoint {path}: it holds Python objects ({', '.join(blocked)}) "
                "besides tensors and plain data, and unpickling them could run code from the file. "
                f"Checkpoints written by s2s never do; {fix}"
            ) from None
        raise CheckpointError(_not_a_checkpoint(path, fix)) from error
    except (KeyError, IndexError, struct.error, UnicodeDecodeError) as error:  # a malformed pickle stream
        raise CheckpointError(_not_a_checkpoint(path, fix)) from error
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as error:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({_first_line(error)}); {fix}"
        ) from error
    if not isinstance(state, dict):
        raise CheckpointError(
            f"checkpoint {path} holds a Python {type(state).__name__}, not a Lightning training checkpoint "
            f"(a dict with {', '.join(CHECKPOINT_KEYS)}); {fix}"
        )
    missing = [key for key in CHECKPOINT_KEYS if key not in state]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} lacks {missing}: it is not a Lightning training checkpoint; {fix}"
        )
    return state


def _unsafe_globals(path: Path, error: Exception) -> list[str]:
    """The non-allow-listed Python objects a checkpoint names (read without running anything)."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # not a zip checkpoint: fall back to the unpickler's own message
        names = []
    return names or re.findall(r"GLOBAL ([\w.]+)", str(error))


def _not_a_checkpoint(path: Path, fix: str) -> str:
    return (
        f"checkpoint {path} is corrupt, truncated or not a PyTorch checkpoint (its bytes do not read "
        f"as one); {fix}"
    )


def _first_line(error: Exception) -> str:
    """The first sentence of an error (torch's zip errors run on for a paragraph)."""
    text = str(error).strip()
    if not text:
        return "the file ends early" if isinstance(error, EOFError) else type(error).__name__
    return text.splitlines()[0].split(". ")[0]
