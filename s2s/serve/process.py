"""`python -m s2s.serve` as a subprocess, for load tests and tests: started, waited for, stopped.

Its output is read to the end by a thread, so a chatty server (a traceback each failed step, say)
never blocks on a full pipe while the caller is busy with its clients."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading

SERVING_LINE = re.compile(r"open (http://\S+/)")


def stop_process(process: subprocess.Popen, timeout: float = 10) -> None:
    """Terminate `process` if it still runs, killing it when it does not go within `timeout`."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)


class ServerProcess:
    """`python -m s2s.serve ARGS` (key=value options); `url` once it prints that it is serving."""

    def __init__(self, args: list[str]):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "s2s.serve", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []
        self.url: str | None = None
        self._found = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            match = SERVING_LINE.search(line)
            if match and self.url is None:
                self.url = match.group(1)
                self._found.set()
        self._found.set()  # it exited without serving: wait_ready need not wait out its timeout

    def output(self, last: int = 60) -> str:
        return "\n".join(self.lines[-last:])

    def wait_ready(self, timeout: float) -> str:
        """The server's URL, once it serves; RuntimeError with its output when it does not in time."""
        self._found.wait(timeout)
        if self.url is None:
            raise RuntimeError(
                f"the server printed no 'open http://...' line within {timeout:.0f} s (exit code "
                f"{self.process.poll()}); its output:\n{self.output()}"
            )
        return self.url

    def interrupt(self, timeout: float = 30) -> int:
        """Ctrl+C, as a person stops it; its exit code (-9: killed, it did not go within `timeout`)."""
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def stop(self) -> None:
        stop_process(self.process)
