"""The agent's own process: what ``tether gateway run`` becomes once its options are parsed.

The agent runs for months on small machines. The command line that starts it is parsed by
Typer, which validates every option through pydantic: about 9 MiB of modules that nothing uses
once the options are read. So ``tether gateway run`` parses and then replaces its process image
(``exec``, same PID, same signals and supervision) with ``python -m tether.gateway.service
DATA_DIR LOG_LEVEL LOG_FORMAT``, which loads the agent and nothing of the command line.

That form is internal: run ``tether gateway run`` instead. Called in-process (tests, embedding)
the command runs :func:`serve` directly.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

__all__ = ["EXIT_NOT_READY", "EXIT_STOPPED", "hand_over", "main", "serve", "service_argv"]

#: Not enrolled, or the settings are wrong: an operator must act before it can run.
EXIT_NOT_READY = 2
#: The agent stopped itself and must not be restarted blindly (its gateway was revoked).
EXIT_STOPPED = 3


def service_argv(data_dir: Path, log_level: str, log_format: str) -> list[str]:
    return [sys.executable, "-m", __name__, os.fspath(data_dir), log_level, log_format]


def hand_over(data_dir: Path, log_level: str, log_format: str) -> None:
    """Become the agent's process (see the module's description). Returns only if that
    failed, having said why: the caller then runs the agent itself (:func:`serve`)."""
    sys.stdout.flush()
    sys.stderr.flush()
    argv = service_argv(data_dir, log_level, log_format)
    try:
        os.execv(argv[0], argv)  # noqa: S606 (this interpreter, arguments of our own)
    except OSError as exc:
        print(
            f"warning: the agent runs in this process ({argv[0]} could not be started: "
            f"{exc.strerror})",
            file=sys.stderr,
        )


def _error(message: str) -> None:
    # Loaded only to say what is wrong, as every command does, just before the process ends.
    from tether.cli.output import error

    error(message)


def serve(data_dir: Path, log_level: str, log_format: str) -> int:
    """Run the agent until SIGINT or SIGTERM; the process's exit code."""
    from tether.cli.runtime import run_async, setup_logging
    from tether.gateway.agent import Agent, AgentStopped
    from tether.gateway.identity import NotEnrolled, load_identity
    from tether.gateway.settings import AgentSettingsError, load_agent_settings

    setup_logging(log_level, log_format)
    try:
        settings = load_agent_settings(data_dir)
        identity = load_identity(settings.identity_dir)
    except (NotEnrolled, AgentSettingsError) as exc:
        _error(str(exc))
        return EXIT_NOT_READY

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await Agent(settings, identity).run(stop)

    try:
        run_async(run())
    except AgentStopped as exc:
        _error(str(exc))
        return EXIT_STOPPED
    return 0


def main(args: Sequence[str] | None = None) -> NoReturn:
    given = list(sys.argv[1:] if args is None else args)
    if len(given) != 3:
        print(
            "usage: python -m tether.gateway.service DATA_DIR LOG_LEVEL LOG_FORMAT "
            "(internal: run `tether gateway run`)",
            file=sys.stderr,
        )
        sys.exit(64)
    data_dir, log_level, log_format = given
    sys.exit(serve(Path(data_dir), log_level, log_format))


if __name__ == "__main__":
    main()
