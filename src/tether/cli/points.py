"""``tether points …`` and ``tether config …``: what gateways discovered, their data, settings."""

from __future__ import annotations

import csv
import json
import sys
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich.text import Text

from tether.cli.client import client_from_env
from tether.cli.ops import _call
from tether.cli.output import age, console, fail, print_json, table

points_app = typer.Typer(help="Discovered points and their observations.", no_args_is_help=True)
config_app = typer.Typer(help="Gateway configuration pushed from the cloud.", no_args_is_help=True)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


@points_app.command("list")
def points_list(
    gateway: str, as_json: bool = typer.Option(False, "--json", help="Print JSON.")
) -> None:
    """Points a gateway discovered, with their latest value."""
    data = _call(client_from_env().get, f"/api/v1/gateways/{gateway}/points")
    if as_json:
        print_json(data)
        return
    table(
        f"{len(data)} points of {gateway}",
        ["point", "name", "unit", "last value", "at"],
        [[p["point_id"], p["name"], p["unit"], p["last_value"], _when(p["last_ts"])] for p in data],
    )


@points_app.command("query")
def points_query(
    gateway: str,
    point: str,
    since: str | None = typer.Option(None, "--since", help="Unix time or ISO 8601."),
    until: str | None = typer.Option(None, "--until", help="Unix time or ISO 8601."),
    limit: int = typer.Option(10_000, "--limit"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV."),
) -> None:
    """Observations of one point, oldest first."""
    data = _call(
        client_from_env().get,
        f"/api/v1/gateways/{gateway}/observations",
        point=point,
        since=since,
        until=until,
        limit=limit,
    )
    if as_json:
        print_json(data)
    elif as_csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(["time", "ts", "point_id", "value", "quality"])
        for o in data:
            writer.writerow([_when(o["ts"]), o["ts"], o["point_id"], o["value"], o["quality"]])
    else:
        table(
            f"{len(data)} observations of {point}",
            ["time", "value", "quality"],
            [[_when(o["ts"]), o["value"], o["quality"]] for o in data],
        )


@points_app.command("tail")
def points_tail(
    gateway: str,
    point: str | None = typer.Option(None, "--point", help="Only this point."),
    interval: float = typer.Option(1.0, "--interval", help="Seconds between polls."),
    count: int | None = typer.Option(None, "--count", help="Stop after this many rows."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """Follow new observations as they arrive (Ctrl-C stops)."""
    client = client_from_env()
    cursor = time.time() - 60
    shown = 0
    try:
        while count is None or shown < count:
            rows = _call(
                client.get,
                f"/api/v1/gateways/{gateway}/observations",
                point=point,
                after=repr(cursor),
                limit=1000,
            )
            for o in rows:
                if as_json:
                    sys.stdout.write(json.dumps(o) + "\n")
                else:
                    console.print(
                        f"{_when(o['ts'])}  {o['point_id']:<40} {o['value']}", highlight=False
                    )
                cursor = max(cursor, o["ts"])
                shown += 1
                if count is not None and shown >= count:
                    break
            sys.stdout.flush()
            if count is None or shown < count:
                time.sleep(interval)
    except KeyboardInterrupt:
        pass


def _load_document(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, ValueError) as exc:
        raise fail(f"{path}: {exc}", 2) from None
    if not isinstance(data, dict):
        raise fail(f"{path}: expected a table/object at the top", 2)
    return data


@config_app.command("set")
def config_set(
    gateway: str,
    section: str,
    document: Path = typer.Argument(..., help="A JSON or TOML file."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Set a configuration section (e.g. ``connectors``); the gateway applies it at once."""
    data = _call(
        client_from_env().request,
        "PUT",
        f"/api/v1/gateways/{gateway}/config/{section}",
        _load_document(document),
    )
    if as_json:
        print_json(data)
    else:
        console.print(f"{section} v{data['version']} stored; pushed to {gateway}")


@config_app.command("show")
def config_show(
    gateway: str, as_json: bool = typer.Option(False, "--json", help="Print JSON.")
) -> None:
    """Configuration sections and the version the gateway applied."""
    data = _call(client_from_env().get, f"/api/v1/gateways/{gateway}/config")
    if as_json:
        print_json(data)
        return
    table(
        f"configuration of {gateway}",
        ["section", "version", "applied", "error", "updated"],
        [
            [
                c["section"],
                c["version"],
                c["applied_version"],
                c["applied_error"],
                age(c["updated_at"]),
            ]
            for c in data
        ],
    )


def logs(
    gateway: str,
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new records."),
    level: str | None = typer.Option(None, "--level", help="This level and above."),
    limit: int = typer.Option(200, "--limit"),
    interval: float = typer.Option(2.0, "--interval", help="Seconds between polls (--follow)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """A gateway's logs (its agent, and OS logs it was told to ship)."""
    client = client_from_env()
    cursor: float | None = None
    colors = {"warning": "yellow", "error": "red", "critical": "bold red", "debug": "dim"}
    try:
        while True:
            rows = _call(
                client.get,
                f"/api/v1/gateways/{gateway}/logs",
                level=level,
                limit=limit,
                after=repr(cursor) if cursor is not None else None,
            )
            for r in rows:
                if as_json:
                    sys.stdout.write(json.dumps(r) + "\n")
                else:
                    color = colors.get(r["level"], "")
                    line = f"{_when(r['ts'])} {r['level']:<8} {r['source']}: {r['message']}"
                    console.print(Text(line, style=color), highlight=False)
                cursor = max(cursor or 0.0, r["ts"])
            sys.stdout.flush()
            if not follow:
                return
            if cursor is None:
                cursor = time.time() - 1
            time.sleep(interval)
    except KeyboardInterrupt:
        pass
