"""``tether cloud …``: run the cloud service, back up its state and restore it."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.text import Text

from tether.cli.output import console, err, fail
from tether.cli.runtime import run_async, setup_logging
from tether.cloud.settings import (
    CloudSettings,
    SettingsError,
    connections_per_worker,
    load_settings,
)

if TYPE_CHECKING:
    from tether.cloud.backup import BackupManifest

app = typer.Typer(help="The cloud service.", no_args_is_help=True)


@app.command("serve")
def serve(
    config: Path | None = typer.Option(
        None, "--config", "-c", help="The cloud's settings file (TOML), as `cloud serve` takes it."
    ),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Where state is kept."),
    host: str | None = typer.Option(None, "--host", help="Listen address."),
    port: int | None = typer.Option(None, "--port", help="Listen port."),
    hostname: str | None = typer.Option(None, "--hostname", help="Name gateways dial."),
    database_url: str | None = typer.Option(
        None,
        "--database-url",
        envvar="TETHER_DATABASE_URL",
        help="PostgreSQL instead of the SQLite file: postgresql+asyncpg://user@host/db.",
    ),
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


# --- backup and restore ---------------------------------------------------------------------

#: What an archive holding the CA key means, said by both commands.
ARCHIVE_WARNING = (
    "This archive holds the platform CA's private key: anyone who has it can issue certificates "
    "every gateway trusts. Keep it secret: encrypted, offline, readable only by those who may "
    "restore the cloud."
)


def _say(text: str = "", style: str | None = None) -> None:
    """One line on stdout, as plain text (paths may hold brackets that are not markup)."""
    console.print(Text(text, style=style or ""), soft_wrap=True, highlight=False)


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


@contextlib.contextmanager
def _progress_bar() -> Iterator[Callable[[str, int, int], None] | None]:
    """A progress bar on stderr when it is a terminal (one row per step), else nothing."""
    if not err.is_terminal:
        yield None
        return
    from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn

    columns = (TextColumn("{task.description:<18}"), BarColumn(), TaskProgressColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        tasks: dict[str, TaskID] = {}

        def update(step: str, done: int, total: int) -> None:
            if step not in tasks:
                tasks[step] = bar.add_task(step, total=max(total, 1))
            bar.update(tasks[step], completed=done, total=max(total, 1))

        yield update


def _members(manifest: BackupManifest) -> None:
    width = max(len(entry.path) for entry in manifest.members)
    for entry in manifest.members:
        secret = "  secret" if entry.secret else ""
        _say(f"  {entry.path:<{width}}  {_size(entry.size):>10}{secret}")


@app.command("backup")
def backup(
    output: Path = typer.Option(
        ..., "--output", "-o", help="The archive to write (a .tar.gz, mode 0600)."
    ),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="The cloud's data directory."),
    config: Path | None = typer.Option(
        None, "--config", "-c", help="The cloud's settings file (TOML), as `cloud serve` takes it."
    ),
    database_url: str | None = typer.Option(
        None,
        "--database-url",
        envvar="TETHER_DATABASE_URL",
        help="PostgreSQL instead of the SQLite file: postgresql+asyncpg://user@host/db.",
    ),
) -> None:
    """Back up a cloud's state into one archive, while it runs.

    \b
    The SQLite database (a consistent snapshot, taken with SQLite's backup API),
    the platform CA and server credentials, the admin token and password,
    and a manifest with the SHA-256 of each.
    A PostgreSQL database is not included: back it up with pg_dump.
    """
    from tether.cloud.backup import BackupError, create_backup

    try:
        settings = load_settings(config, data_dir=data_dir, database_url=database_url)
    except SettingsError as exc:
        raise fail(str(exc), 2) from None
    if not settings.data_dir.is_dir():
        raise fail(f"no data directory {settings.data_dir} (give --data-dir or --config)", 2)
    try:
        with _progress_bar() as progress:
            result = create_backup(settings, output, progress=progress)
    except BackupError as exc:
        raise fail(str(exc)) from None
    manifest = result.manifest
    _say(f"wrote {result.path} ({_size(result.size)}, mode 0600), from {settings.data_dir}:")
    _members(manifest)
    if manifest.database.included:
        revisions = ", ".join(manifest.database.schema_revisions)
        _say(f"database: SQLite, consistent snapshot, schema revision {revisions}")
    else:
        _say(
            "database: PostgreSQL, not in this archive: back it up with pg_dump "
            "(pg_dump --format=custom --file=tether.dump DATABASE) at the same time"
        )
    _say(f"platform CA: {manifest.ca_fingerprint}")
    _say(ARCHIVE_WARNING, style="bold")


@app.command("restore")
def restore(
    archive: Path = typer.Argument(..., help="An archive made by `tether cloud backup`."),
    data_dir: Path = typer.Option(
        ..., "--data-dir", help="Where to restore: a new or empty directory."
    ),
    force: bool = typer.Option(
        False,
        "--force",
        help="Restore into a non-empty directory, replacing the files the archive holds "
        "(stop any cloud using it first).",
    ),
) -> None:
    """Restore a cloud's state from an archive made by `tether cloud backup`.

    The whole archive is checked first (its manifest, the schema revisions, every member's
    SHA-256); nothing is written unless all of it is sound. A cloud started on the restored
    directory serves the same platform CA, so gateways enrolled before the backup link again
    without enrolling anew.
    """
    from tether.cloud.backup import BackupError, restore_backup

    try:
        with _progress_bar() as progress:
            result = restore_backup(archive, data_dir, force=force, progress=progress)
    except BackupError as exc:
        raise fail(str(exc)) from None
    manifest = result.manifest
    made = manifest.created_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    _say(
        f"checked {archive}: made {made} by tether {manifest.tether_version}, "
        f"{len(manifest.members)} members, every SHA-256 matches"
    )
    _say(f"restored into {data_dir} (directories 0700, keys and database 0600):")
    _members(manifest)
    if result.replaced:
        _say(f"replaced: {', '.join(result.replaced)}")
    _say(f"platform CA: {manifest.ca_fingerprint} (the one the gateways pin)")
    target = str(data_dir.absolute())
    _say("next:")
    step = 1
    if manifest.database.included:
        revisions = ", ".join(manifest.database.schema_revisions)
        _say(f"  {step}. the database is at schema revision {revisions}; the cloud migrates it")
        _say("     to this tether's schema when it starts")
    else:
        _say(f"  {step}. restore the PostgreSQL database from its pg_dump")
        _say("     (pg_restore --dbname=DATABASE tether.dump); start with the same --database-url")
    step += 1
    _say(f"  {step}. start the cloud with the hostname and port the gateways dial (they pin its")
    _say(f"     URL and this CA): tether cloud serve --data-dir {target} --config cloud.toml")
    _say(f"  {step + 1}. if the cloud runs as its own user: chown -R tether:tether {target}")
    _say(
        f"  {step + 2}. gateways enrolled before {made} link again by themselves; any enrolled "
        "after it must be enrolled again"
    )
    _say(ARCHIVE_WARNING, style="bold")
