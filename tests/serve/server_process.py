"""Processes the server tests start: `python -m s2s.serve` as a person runs it, and how to end one."""

import os
import re
import signal
import subprocess
import sys
import threading


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
    """`python -m s2s.serve` as a subprocess; `url` once it prints that it is serving."""

    def __init__(self, args: list[str]):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "s2s.serve", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []
        self.found = threading.Event()
        self.url: str | None = None
        threading.Thread(target=self._read, daemon=True).start()  # drained to the end: never blocks

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            match = re.search(r"http://127\.0\.0\.1:\d+/", line)
            if match and self.url is None:
                self.url = match.group(0)
                self.found.set()
        self.found.set()

    def output(self) -> str:
        return "\n".join(self.lines[-60:])

    def wait_ready(self, timeout: float) -> str:
        self.found.wait(timeout)
        assert self.url, (
            f"the server printed no http://127.0.0.1:PORT/ line within {timeout:.0f} s "
            f"(exit code {self.process.poll()}); its output:\n{self.output()}"
        )
        return self.url

    def interrupt(self, timeout: float = 30) -> int:
        """Ctrl+C, as a person stops it; its exit code."""
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout)

    def stop(self):
        stop_process(self.process)
