"""A SecantusDB server (a real MongoDB-wire-protocol server) for the tests that need one.

SecantusDB (``pip install secantusdb``, GPL-2.0, a test-only dependency) runs
in a subprocess on a free port; the fixtures in ``conftest.py`` start it with
authentication on and connect as a user whose password comes from an
environment variable.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

USER = "xtal"
PASSWORD = "s3cret-Pa55word-never-shown"
PASSWORD_ENV = "XTALLOOP_TEST_MONGO_PASSWORD"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A SecantusDB server process on ``127.0.0.1:port`` storing in ``path``."""

    def __init__(self, path: Path, port: int) -> None:
        self.path, self.port = path, port
        self.process: subprocess.Popen | None = None

    def start(self, auth: bool) -> None:
        command = [sys.executable, "-m", "secantus", "--host", "127.0.0.1",
                   "--port", str(self.port), "--storage-path", str(self.path / "data"),
                   "--log-level", "WARNING", *(["--auth"] if auth else [])]
        log = open(self.path / "server.log", "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(command, stdout=log, stderr=log)
        self._wait_until_listening()

    def _wait_until_listening(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = (self.path / "server.log").read_text()[-2000:]
                pytest.fail(f"secantusd exited with {self.process.returncode}:\n{log}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.2)
        pytest.fail(f"secantusd did not listen on port {self.port} within {timeout} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
