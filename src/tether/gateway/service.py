"""The agent's own process: what ``tether gateway run`` becomes once its options are parsed.

The agent runs for months on small machines. The command line that starts it is parsed by
Typer, which validates every option through pydantic: about 9 MiB of modules that nothing uses
once the options are read. So ``tether gateway run`` parses and then replaces its process image
(``exec``, same PID, same signals and supervision) with ``python -m tether.gateway.service
DATA_DIR LOG_LEVEL LOG_FORMAT``, which loads the agent and nothing of the command line.

That form is internal: run ``tether gateway run`` instead. Called in-process (tests, embedding)
the command runs :func:`serve` directly.

Before the agent starts, everything an operator must fix is checked and said in one line (exit
2): settings, the identity's files (certificate, key, pinned CA), the data directory, a second
agent on it, a damaged command ledger. A damaged spool is moved aside instead (see
:func:`_open_spool`). The spool and the ledger are opened once, by these checks, and handed to
the agent, which keeps them (and their locks) until it stops. The spool is opened before the
ledger: on a full disk it gives its reserve back first.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import stat
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from tether.gateway.identity import GatewayIdentity
    from tether.gateway.ledger import CommandLedger
    from tether.gateway.settings import AgentSettings
    from tether.gateway.spool import AsyncSpool

__all__ = ["EXIT_NOT_READY", "EXIT_STOPPED", "hand_over", "main", "serve", "service_argv"]

#: Named for what it is, also when this module runs as ``__main__``.
log = logging.getLogger("tether.gateway.service")

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


class NotReady(Exception):
    """The agent cannot start until an operator acts; the message says what to do."""


def _another_agent(data_dir: Path) -> NotReady:
    return NotReady(
        f"another agent is running on {data_dir} (its files are locked): stop it first, or "
        f"give this one its own --data-dir"
    )


def _private_directory(data_dir: Path) -> None:
    """The data directory holds the gateway's key and pushed configuration: owner only."""
    try:
        info = data_dir.stat()
    except OSError as exc:
        raise NotReady(f"{data_dir}: {exc.strerror}") from None
    if stat.S_IMODE(info.st_mode) & 0o077 and info.st_uid == os.geteuid():
        try:
            os.chmod(data_dir, 0o700)
            log.info("%s made readable by its owner only", data_dir)
        except OSError as exc:  # a read-only file system is said by what cannot open on it
            log.warning("%s is readable by others and stays so: %s", data_dir, exc.strerror)


async def _open_spool(settings: AgentSettings) -> AsyncSpool:
    """The agent's spool, opened before its ledger: on a full disk it gives its reserve back
    (the ledger needs a little room); its errors are said plainly.

    A spool SQLite cannot read ("file is not a database") is moved aside, loudly, and a fresh
    one started rather than the agent refused: its observations are unreadable whatever the
    operator does, while a refusing agent would also stop collecting new ones and stop obeying
    commands until someone came. The fresh spool numbers its observations above any the lost
    one used, so the cloud takes none of them for duplicates.
    """
    from tether.gateway.agent import open_spool
    from tether.gateway.spool import SpoolCorrupt, SpoolError, SpoolLocked, move_aside

    path = settings.spool_path
    try:
        try:
            return await open_spool(settings)
        except SpoolCorrupt as exc:
            aside = move_aside(path, now=time.time())
            log.error(
                "%s; it was moved aside to %s and a fresh spool started: the observations it "
                "held are lost (counted nowhere, they could not be read)",
                exc,
                aside,
            )
            return await open_spool(settings)
    except SpoolLocked:
        raise _another_agent(settings.data_dir) from None
    except SpoolError as exc:
        raise NotReady(str(exc)) from None
    except OSError as exc:
        raise NotReady(f"{path}: {exc.strerror or exc}") from None


def _open_ledger(settings: AgentSettings) -> CommandLedger:
    from tether.gateway.ledger import CommandLedger, LedgerError, LedgerLocked

    try:
        return CommandLedger(settings.state_db)
    except LedgerLocked:
        raise _another_agent(settings.data_dir) from None
    except LedgerError as exc:
        raise NotReady(
            f"{exc}: the agent's command ledger must be repaired or moved aside by hand "
            f"(moving it aside forgets which commands ran, and the configuration pushed, "
            f"until the cloud sends it again)"
        ) from None


async def _open_stores(settings: AgentSettings) -> tuple[AsyncSpool, CommandLedger]:
    """The agent's spool and command ledger, open (and locked) for it."""
    spool = await _open_spool(settings)
    try:
        return spool, _open_ledger(settings)
    except BaseException:
        await spool.close()
        raise


def _preflight(data_dir: Path) -> tuple[AgentSettings, GatewayIdentity]:
    """Settings and identity, once the files they come from have been checked."""
    from tether.gateway.identity import NotEnrolled, load_identity
    from tether.gateway.settings import AgentSettingsError, load_agent_settings
    from tether.pki.errors import PkiError

    try:
        settings = load_agent_settings(data_dir)
        identity = load_identity(settings.identity_dir)
        identity.ssl_context()  # the key, its mode, the certificate and the pinned CA load
    except (NotEnrolled, AgentSettingsError) as exc:
        raise NotReady(str(exc)) from None
    except PkiError as exc:
        raise NotReady(
            f"the gateway's identity in {settings.identity_dir} is unusable: {exc}"
        ) from None
    _private_directory(data_dir)
    return settings, identity


def serve(data_dir: Path, log_level: str, log_format: str) -> int:
    """Run the agent until SIGINT or SIGTERM; the process's exit code."""
    from tether.cli.runtime import run_async, setup_logging
    from tether.gateway.agent import Agent, AgentStopped
    from tether.gateway.settings import check_log_options

    try:
        check_log_options(log_level, log_format)
    except ValueError as exc:
        _error(str(exc))
        return EXIT_NOT_READY
    setup_logging(log_level, log_format)
    try:
        settings, identity = _preflight(data_dir)
    except NotReady as exc:
        _error(str(exc))
        return EXIT_NOT_READY

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        spool, ledger = await _open_stores(settings)
        await Agent(settings, identity, ledger=ledger, spool=spool).run(stop)

    try:
        run_async(run())
    except NotReady as exc:
        _error(str(exc))
        return EXIT_NOT_READY
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
