"""Start a helper process, wait until it is ready, and stop it by its PID."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

READY_TIMEOUT = 15.0


class PeerStartError(RuntimeError):
    """A test-bed peer did not become ready; carries the tail of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def is_listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until(
    condition: Callable[[], bool], *, timeout: float = READY_TIMEOUT, what: str = "condition"
) -> None:
    """Poll ``condition`` until it holds or ``timeout`` elapses (then raise)."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start_process(
    argv: Sequence[str],
    *,
    log: Path,
    ready: Callable[[], bool],
    what: str,
    env: dict[str, str] | None = None,
    timeout: float = READY_TIMEOUT,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` with output to ``log``; return once ``ready()`` holds (or raise)."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )

    def _ready() -> bool:
        if process.poll() is not None:
            raise PeerStartError(f"{what} exited with {process.returncode}:\n{log_tail(log)}")
        return ready()

    try:
        wait_until(_ready, timeout=timeout, what=what)
    except (TimeoutError, PeerStartError) as exc:
        stop_process(process)
        raise PeerStartError(f"{what} did not start: {exc}\n{log_tail(log)}") from exc
    return process


def stop_process(process: subprocess.Popen[bytes], *, timeout: float = 10.0) -> None:
    """Stop the process we started: SIGTERM, then SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout)
