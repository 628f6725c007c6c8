"""``tether points …`` and ``tether config …``: what gateways discovered, their data, settings."""

from __future__ import annotations

import csv
import json
import math
import sys
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich.text import Text

from tether.cli.answers import ConfigSection, ConfigStored, LogRecord, Observation, Point
from tether.cli.client import api_command, api_path, client_from_env, decode
from tether.cli.ops import within
from tether.cli.output import age, console, count, fail, print_json, table, utc
from tether.protocol.config import CONFIG_SECTIONS, LOG_LEVEL_NAMES

points_app = typer.Typer(help="Discovered points and their observations.", no_args_is_help=True)
config_app = typer.Typer(help="Gateway configuration pushed from the cloud.", no_args_is_help=True)


#: The levels ``tether logs --level`` takes, lowest first (the agent's and the cloud's).
LOG_LEVELS = LOG_LEVEL_NAMES
#: ``tether logs --limit`` and ``tether points query --limit``: what the cloud answers at most.
MAX_LOGS = 5000
MAX_OBSERVATIONS = 100_000
#: Longest pause between polls (``--interval``).
MAX_INTERVAL = 3600.0

_TIME_HELP = "Unix time or ISO 8601; a time without an offset is in this computer's time zone."


def _iso_utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def instant(option: str, value: str) -> str:
    """*value* as the cloud should read it: a Unix time as given, an ISO 8601 time with its
    offset (one without is this computer's local time, made explicit), never left to the
    cloud's own time zone."""
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            raise fail(f"{option} takes a Unix time or an ISO 8601 time, got {value!r}", 2)
        return value
    try:
        at = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise fail(f"{option} takes a Unix time or an ISO 8601 time, got {value!r}", 2) from None
    if at.tzinfo is None:
        at = at.astimezone()  # this computer's time zone, as people read their own clock
    return at.isoformat()


@points_app.command("list")
@api_command
def points_list(
    gateway: str, as_json: bool = typer.Option(False, "--json", help="Print JSON.")
) -> None:
    """Points a gateway discovered, with their latest value."""
    data = client_from_env().get(api_path("gateways", gateway, "points"))
    if as_json:
        print_json(data)
        return
    points = decode(data, list[Point])
    table(
        count(len(points), "points") + f" of {gateway}",
        ["point", "name", "unit", "last value", "at (UTC)"],
        [[p.point_id, p.name, p.unit, p.last_value, utc(p.last_ts)] for p in points],
    )


@points_app.command("query")
@api_command
def points_query(
    gateway: str,
    point: str,
    since: str | None = typer.Option(None, "--since", help=f"From this time: {_TIME_HELP}"),
    until: str | None = typer.Option(None, "--until", help=f"Before this time: {_TIME_HELP}"),
    limit: int = typer.Option(
        10_000, "--limit", min=1, max=MAX_OBSERVATIONS, help="At most this many."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV (times in UTC, ISO 8601)."),
) -> None:
    """Observations of one point, oldest first."""
    data = client_from_env().get(
        api_path("gateways", gateway, "observations"),
        point=point,
        since=None if since is None else instant("--since", since),
        until=None if until is None else instant("--until", until),
        limit=limit,
    )
    if as_json:
        print_json(data)
        return
    observations = decode(data, list[Observation])
    if as_csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(["time", "ts", "point_id", "value", "quality"])
        for o in observations:
            writer.writerow([_iso_utc(o.ts), o.ts, o.point_id, o.value, o.quality])
    else:
        table(
            count(len(observations), "observations") + f" of {point}",
            ["time (UTC)", "value", "quality"],
            [[utc(o.ts), o.value, o.quality] for o in observations],
        )


@points_app.command("tail")
@api_command
def points_tail(
    gateway: str,
    point: str | None = typer.Option(None, "--point", help="Only this point."),
    interval: float = typer.Option(1.0, "--interval", help="Seconds between polls."),
    count: int | None = typer.Option(None, "--count", min=1, help="Stop after this many rows."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """Follow new observations as they arrive (Ctrl-C stops); times in UTC."""
    within("--interval", interval, MAX_INTERVAL)
    client = client_from_env()
    path = api_path("gateways", gateway, "observations")
    cursor = time.time() - 60
    shown = 0
    try:
        while count is None or shown < count:
            rows = client.get(path, point=point, after=repr(cursor), limit=1000)
            for row, o in zip(rows, decode(rows, list[Observation]), strict=True):
                if as_json:
                    sys.stdout.write(json.dumps(row) + "\n")
                else:
                    line = f"{utc(o.ts)}Z  {o.point_id:<40} {o.value}"
                    console.print(Text(line), highlight=False, soft_wrap=True)
                cursor = max(cursor, o.ts)
                shown += 1
                if count is not None and shown >= count:
                    break
            sys.stdout.flush()
            if count is None or shown < count:
                time.sleep(interval)
    except KeyboardInterrupt:
        pass


def _load_document(path: Path) -> dict[str, Any]:
    """The document of ``tether config set``: TOML when its name ends in ``.toml``, else JSON."""
    toml = path.suffix.lower() == ".toml"
    try:
        text = path.read_text()
        data = tomllib.loads(text) if toml else json.loads(text)
    except OSError as exc:
        raise fail(f"{path}: {exc.strerror or exc}", 2) from None
    except ValueError as exc:
        said = "not TOML" if toml else "not JSON (a TOML file's name ends in .toml)"
        raise fail(f"{path}: {said}: {exc}", 2) from None
    if not isinstance(data, dict):
        raise fail(f"{path}: expected a table/object at the top", 2)
    return data


@config_app.command("set")
@api_command
def config_set(
    gateway: str,
    section: str = typer.Argument(..., help=f"One of {', '.join(CONFIG_SECTIONS)}."),
    document: Path = typer.Argument(
        ..., help="The section's settings: a TOML file (its name ends in .toml), else JSON."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Set a configuration section of a gateway; the gateway applies it at once."""
    body = _load_document(document)
    data = client_from_env().request("PUT", api_path("gateways", gateway, "config", section), body)
    if as_json:
        print_json(data)
    else:
        stored = decode(data, ConfigStored)
        console.print(Text(f"{section} v{stored.version} stored; pushed to {gateway}"))


@config_app.command("show")
@api_command
def config_show(
    gateway: str, as_json: bool = typer.Option(False, "--json", help="Print JSON.")
) -> None:
    """Configuration sections and the version the gateway applied."""
    data = client_from_env().get(api_path("gateways", gateway, "config"))
    if as_json:
        print_json(data)
        return
    table(
        f"configuration of {gateway}",
        ["section", "version", "applied", "error", "updated"],
        [
            [c.section, c.version, c.applied_version, c.applied_error, age(c.updated_at)]
            for c in decode(data, list[ConfigSection])
        ],
    )


def _level(level: str | None) -> str | None:
    if level is None:
        return None
    name = level.strip().lower()
    if name not in LOG_LEVELS:
        raise fail(f"--level takes one of {', '.join(LOG_LEVELS)}; got {level!r}", 2)
    return name


@api_command
def logs(
    gateway: str,
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new records."),
    level: str | None = typer.Option(
        None, "--level", help=f"This level and above: {', '.join(LOG_LEVELS)}."
    ),
    limit: int = typer.Option(200, "--limit", min=1, max=MAX_LOGS, help="At most this many."),
    interval: float = typer.Option(2.0, "--interval", help="Seconds between polls (--follow)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """A gateway's logs (its agent, and OS logs it was told to ship); times in UTC."""
    wanted = _level(level)
    within("--interval", interval, MAX_INTERVAL)
    client = client_from_env()
    path = api_path("gateways", gateway, "logs")
    cursor: float | None = None
    colors = {"warning": "yellow", "error": "red", "critical": "bold red", "debug": "dim"}
    try:
        while True:
            rows = client.get(
                path,
                level=wanted,
                limit=limit,
                after=repr(cursor) if cursor is not None else None,
            )
            for row, r in zip(rows, decode(rows, list[LogRecord]), strict=True):
                if as_json:
                    sys.stdout.write(json.dumps(row) + "\n")
                else:
                    color = colors.get(r.level, "")
                    line = f"{utc(r.ts)}Z {r.level:<8} {r.source}: {r.message}"
                    console.print(Text(line, style=color), highlight=False, soft_wrap=True)
                cursor = max(cursor or 0.0, r.ts)
            sys.stdout.flush()
            if not follow:
                return
            if cursor is None:
                cursor = time.time() - 1
            time.sleep(interval)
    except KeyboardInterrupt:
        pass
