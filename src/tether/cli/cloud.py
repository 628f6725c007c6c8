"""``tether cloud …``: run the cloud service."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import typer

from tether.cli.client import fail
from tether.cli.runtime import run_async, setup_logging
from tether.cloud.settings import SettingsError, load_settings

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
) -> None:
    """Serve EST enrollment, the gateway link and the operator API on one TLS port."""
    from tether.cloud.app import run

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

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run(settings, stop=stop)

    run_async(main())
