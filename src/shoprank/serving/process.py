"""`shoprank serve` in a child process: start it on a free port, wait until it answers, stop it
or kill it with SIGKILL.

Why: a crash test, a multi-worker test or a load benchmark needs the real server (a real
port, real uvicorn workers, a real `kill -9`), not the app object in the test's own process.
The server runs in its own session, so stopping or killing it reaches every worker.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from shoprank.errors import ShoprankError


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """`python -m shoprank.cli serve ARGS --port PORT` with its output appended to `log`."""

    def __init__(self, args: Sequence[str], log: Path, *, port: int | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(log)
        cmd = [sys.executable, "-m", "shoprank.cli", "serve", *args, "--port", str(self.port)]
        with self.log.open("ab") as f:
            self.proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=os.environ | dict(env or {}),
                                         start_new_session=True)

    def _log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def wait_ready(self, timeout: float = 90, workers: int = 1) -> float:
        """Seconds until /readyz answers 200 and `workers` distinct worker processes have
        answered /v1/info (fresh connections reach the workers in turn)."""
        import httpx

        t0 = time.monotonic()
        pids: set[int] = set()
        ready = False
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise ShoprankError(f"server exited with code {self.proc.returncode} during start-up; "
                                    f"log {self.log}:\n{self._log_tail()}")
            try:
                with httpx.Client(timeout=2) as c:
                    if not ready:
                        ready = c.get(self.url + "/readyz").status_code == 200
                    if ready:
                        r = c.get(self.url + "/v1/info")
                        if r.status_code == 200:
                            pids.add(int(r.json()["pid"]))
            except httpx.HTTPError:
                pass
            if ready and len(pids) >= workers:
                return time.monotonic() - t0
            time.sleep(0.2)
        raise ShoprankError(f"server not ready after {timeout:.0f}s ({len(pids)} of {workers} workers answered); "
                            f"log {self.log}:\n{self._log_tail()}")

    def kill9(self) -> None:
        """SIGKILL to the whole server (a crash: no shutdown handler runs)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM (graceful shutdown), then SIGKILL if it has not exited within `timeout`."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill9()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
