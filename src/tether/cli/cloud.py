"""``tether cloud …``: run the cloud service."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
from dataclasses import replace
from pathlib import Path

import typer

from tether.cli.output import fail
from tether.cli.runtime import run_async, setup_logging
from tether.cloud.settings import (
    CloudSettings,
    SettingsError,
    connections_per_worker,
    load_settings,
)

app = typer.Typer(help="The cloud service.", no_args_is_help=True)


@app.command("serve")
def serve(
    config: Path | None = typer.Option(None, "--config", "-c", help="cloud.toml"),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Where state is kept."),
    host: str | None = typer.Option(None, "--host", help="Listen address."),
    port: int | None = typer.Option(None, "--port", help="Listen port."),
    hostname: str | None = typer.Option(None, "--hostname", help="Name gateways dial."),
    database_url: str | None = typer.Option(None, "--database-url", envvar="TETHER_DATABASE_URL"),
    log_level: str = typer.Option("info", "--log-level"),
    log_format: str = typer.Option("text", "--log-format", help="text or json"),
    workers: int | None = typer.Option(
        None,
        "--workers",
        min=1,
        max=64,
        help="Worker processes sharing the port (SO_REUSEPORT); needs PostgreSQL when > 1.",
    ),
) -> None:
    """Serve EST enrollment, the gateway link and the operator API on one TLS port."""
    from tether.cloud.app import prepare

    setup_logging(log_level, log_format)
    try:
        settings = load_settings(
            config,
            data_dir=data_dir,
            listen_host=host,
            listen_port=port,
            hostname=hostname,
            database_url=database_url,
        )
    except SettingsError as exc:
        raise fail(str(exc), 2) from None
    count = workers or settings.workers
    try:
        connections_per_worker(settings, count)
    except SettingsError as exc:
        raise fail(str(exc), 2) from None
    settings = replace(settings, workers=count)  # each worker takes its share of connections
    if count == 1:
        _serve_one(settings, log_level, log_format, reuse_port=False)
        return
    if not settings.database.startswith("postgresql"):
        # Workers learn of new commands through PostgreSQL LISTEN/NOTIFY; SQLite cannot tell
        # another process, so a command could wait until its gateway relinks.
        raise fail("--workers above 1 needs PostgreSQL (--database-url postgresql+asyncpg://…)", 2)
    run_async(prepare(settings))
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(
            target=_serve_one,
            args=(settings, log_level, log_format),
            kwargs={"reuse_port": True},
            name=f"tether-cloud-{i}",
        )
        for i in range(count)
    ]
    for child in children:
        child.start()

    def forward(signum: int, frame: object) -> None:
        for child in children:
            if child.pid is not None and child.is_alive():
                os.kill(child.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for child in children:
        child.join()
    codes = [child.exitcode for child in children]
    if any(code not in (0, -signal.SIGTERM) for code in codes):
        raise fail(f"worker exit codes: {codes}")


def _serve_one(
    settings: CloudSettings, log_level: str, log_format: str, *, reuse_port: bool
) -> None:
    from tether.cloud.app import run

    setup_logging(log_level, log_format)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run(settings, stop=stop, reuse_port=reuse_port, own_process=True)

    run_async(main())
