"""Run `cosa serve` in a child process on a free local port: for tests, benchmarks and notebooks.

`LocalServer.stop()` sends SIGTERM (BentoML's graceful shutdown) and waits; only if that times out
are the server and the worker processes it started killed, each by its own process id.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _descendants(pid: int) -> list[int]:
    """Process ids below `pid` (children first), read from /proc; empty where /proc is unavailable."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = entry.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.parent.name))
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


class LocalServer:
    """A `cosa serve` child process; use as a context manager or call `stop()`."""

    def __init__(self, process: subprocess.Popen[bytes], url: str, log_path: Path, scratch: Path | None = None) -> None:
        self.process = process
        self.url = url
        self.log_path = log_path
        self.scratch = scratch  # removed by stop(): the private BENTOML_HOME (and the log when none was given)
        self.workers: list[int] = []

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def is_ready(self, timeout: float = 2.0) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=timeout) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = 90.0) -> LocalServer:
        """Block until /readyz answers 200; RuntimeError with the log tail if the server dies or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"cosa serve exited with {self.process.returncode}:\n{self.log_tail()}")
            if self.is_ready():
                self.workers = _descendants(self.pid)
                return self
            time.sleep(0.2)
        raise RuntimeError(f"cosa serve was not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; kill the leftovers by pid after `timeout`. Returns the server's exit code."""
        known = set(self.workers) | set(_descendants(self.pid))
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                for pid in [*_descendants(self.pid), self.pid]:
                    _kill(pid)
                self.process.wait(timeout=10)
        for pid in known:  # workers that outlived their arbiter
            if is_server_process(pid):
                _kill(pid)
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
        return int(self.process.returncode)

    def leftovers(self) -> list[int]:
        """Worker processes seen at start-up that still run (after `stop()` this should be empty)."""
        return [pid for pid in self.workers if is_server_process(pid)]

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def is_server_process(pid: int) -> bool:
    """True while `pid` is a live (not zombie) cosa/BentoML server process; guards against reused pids."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, IndexError):
        return False
    return state != "Z" and (b"_bentoml_impl" in cmdline or b"cosa_sdk" in cmdline)


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


def start_server(
    model: str | Path,
    *,
    port: int | None = None,
    host: str = LOOPBACK,
    max_batch_size: int = 8,
    max_latency_ms: int | None = None,
    workers: int = 1,
    backend: str = "auto",
    env: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
    log_path: str | Path | None = None,
    ready_timeout: float = 90.0,
) -> LocalServer:
    """Start `cosa serve` for `model` and wait until it is ready; the log goes to `log_path` (or a temp file).

    `max_latency_ms=None` keeps the service's default latency budget (settings.DEFAULT_MAX_LATENCY_MS).

    Each server gets a private BENTOML_HOME unless `env` names one: BentoML wipes the Prometheus
    folder under it at start-up, which would blank the metrics of another server sharing it.
    """
    port = free_port(host) if port is None else port
    scratch = Path(tempfile.mkdtemp(prefix="cosa-serve-"))
    log_path = Path(log_path) if log_path is not None else scratch / "server.log"
    command = [
        sys.executable, "-m", "cosa_sdk.cli", "serve", "--model", str(model), "--host", host, "--port", str(port),
        "--backend", backend, "--max-batch-size", str(max_batch_size), "--workers", str(workers),
        *(["--max-latency-ms", str(max_latency_ms)] if max_latency_ms is not None else []), *extra_args,
    ]  # fmt: skip
    child_env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "BENTOML_HOME": str(scratch / "home"), **(env or {})}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=child_env
        )
    server = LocalServer(process, f"http://{host}:{port}", log_path, scratch)
    try:
        return server.wait_ready(ready_timeout)
    except BaseException:
        server.stop(timeout=5)
        raise
