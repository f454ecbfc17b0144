"""Which s2s source a process runs: the git commit and whether it had uncommitted changes.

Recorded by training (in every checkpoint) and by export (in the artifact), so a model says which
code trained it even when it is exported later from another checkout."""

from __future__ import annotations

import subprocess
from pathlib import Path


def code_commit() -> dict | None:
    """{"commit": sha, "dirty": bool} of the s2s source that runs; None when it is not a git
    checkout (an installed package) or git is missing."""
    source = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=20
        )
        if head.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}
