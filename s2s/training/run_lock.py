"""One launch per run directory: an OS lock on `<run dir>/run.lock` for as long as the launch runs.

Two launches of one command would both train into the same checkpoints, metrics and wandb run.
`fcntl.flock` is held by the open file: the kernel releases it when the process ends, however it
ends (a SIGKILL included), so a dead launch never blocks the next one. The file names the holder
(pid, host, start, command) so that a refused launch can say who is running.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

LOCK_NAME = "run.lock"


class RunLockedError(RuntimeError):
    """Another launch is using this run directory."""


@dataclass
class RunLock:
    """`RunLock.acquire(run_dir)` takes the lock at once or raises RunLockedError; `release()` frees it."""

    path: Path
    file: IO[str] | None = field(default=None, repr=False)
    recorded: bool = False

    @classmethod
    def acquire(cls, run_dir: str | os.PathLike) -> RunLock:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / LOCK_NAME
        file = open(path, "a+")  # noqa: SIM115 - held open for the launch: the lock lives with it
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip()
            file.close()
            raise RunLockedError(
                f"run directory {run_dir} is in use by another launch ({_describe(holder)}); "
                "wait for it to finish (or stop it), or start a separate run with run_name=<another name>"
            ) from None
        return cls(path=path, file=file)

    def record_holder(self) -> None:
        """Write who holds the lock (done once the launch is accepted, so a refused one changes nothing)."""
        assert self.file is not None, "the lock was released"
        self.file.seek(0)
        self.file.truncate()
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        self.file.write(f"{os.getpid()} {socket.gethostname()} {started} {' '.join(sys.argv)}\n")
        self.file.flush()
        self.recorded = True

    def release(self) -> None:
        if self.file is None:
            return
        if self.recorded:  # the holder line describes a running launch only
            self.file.seek(0)
            self.file.truncate()
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()
        self.file = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _describe(holder: str) -> str:
    parts = holder.split(" ", 4)
    if len(parts) < 4 or not parts[0].isdigit():
        return "a launch that is just starting"
    pid, host, day, clock = parts[:4]
    if host == socket.gethostname() and not _alive(int(pid)):
        return "a launch that is just starting"  # the line is a killed launch's; a new one holds the lock
    command = parts[4] if len(parts) > 4 else ""
    return f"pid {pid} on {host}, started {day} {clock}" + (f": {command}" if command else "")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_global_rank_zero() -> bool:
    """True unless this process is a non-zero rank of a distributed launch (those share rank 0's lock)."""
    return all(
        os.environ.get(name, "0") == "0" for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")
    )
