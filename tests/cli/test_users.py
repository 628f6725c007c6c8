"""``tether user …`` and ``tether audit`` as people run them, against a real cloud over TLS."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

from tests.cli.stub import Stub, invoke, tether
from tests.support.cloudproc import Cloud, running_cloud, tether_script
from tests.support.console import console_client, console_login

CLI_TIMEOUT = 60.0


async def _tether(
    cloud: Cloud, *args: str, token: str | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``tether ARGS`` in a thread, so the cloud in this event loop keeps answering."""
    return await asyncio.to_thread(
        subprocess.run,
        [str(tether_script()), *args],
        env=cloud.cli_env(token),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )


async def test_an_admin_manages_users_and_their_tokens(tmp_path: Path) -> None:
    async with running_cloud(tmp_path / "cloud") as cloud:
        made = await _tether(cloud, "user", "create", "Olga", "--role", "operator", "--json")
        assert made.returncode == 0, made.stderr
        created = json.loads(made.stdout)
        assert created["user"]["username"] == "olga"
        password = created["password"]
        assert len(password) >= 20

        given = await _tether(
            cloud, "user", "create", "vera", "--password-stdin", stdin="vera's passphrase\n"
        )
        assert given.returncode == 0, given.stderr
        assert "password (shown once)" not in given.stdout

        listed = await _tether(cloud, "user", "list", "--json")
        users = {u["username"]: u for u in json.loads(listed.stdout)}
        assert set(users) == {"admin", "olga", "vera"}
        assert users["vera"]["role"] == "viewer"

        token_run = await _tether(cloud, "user", "token", "create", "olga", "--json")
        token = json.loads(token_run.stdout)
        assert token["token"]["role"] == "operator"
        whoami = await _tether(cloud, "gateways", "list", "--json", token=token["secret"])
        assert whoami.returncode == 0, whoami.stderr

        # an operator may not manage users: the API refuses, the CLI says so and fails
        refused = await _tether(cloud, "user", "list", token=token["secret"])
        assert refused.returncode == 1
        assert "403" in refused.stderr

        assert (await _tether(cloud, "user", "role", "olga", "viewer")).returncode == 0
        tokens = json.loads(
            (await _tether(cloud, "user", "token", "list", "olga", "--json")).stdout
        )
        assert [t["role"] for t in tokens] == ["viewer"]

        reset = await _tether(cloud, "user", "passwd", "olga")
        assert reset.returncode == 0, reset.stderr
        new_password = reset.stdout.strip().splitlines()[-1]
        async with console_client(cloud) as client:
            await console_login(client, "olga", password, expect=401)
            await console_login(client, "olga", new_password)

        assert (await _tether(cloud, "user", "disable", "olga")).returncode == 0
        after = await _tether(cloud, "gateways", "list", token=token["secret"])
        assert after.returncode == 1
        assert "401" in after.stderr
        last_admin = await _tether(cloud, "user", "disable", "admin")
        assert last_admin.returncode == 1
        assert "no enabled admin" in last_admin.stderr


async def test_the_audit_log_exports_as_json_lines_and_csv(tmp_path: Path) -> None:
    async with running_cloud(tmp_path / "cloud") as cloud:
        await _tether(cloud, "user", "create", "olga")
        await _tether(cloud, "token", "create", "--name", "boiler-room")
        lines = await _tether(cloud, "audit")
        assert lines.returncode == 0, lines.stderr
        entries = [json.loads(line) for line in lines.stdout.splitlines()]
        actions = [e["action"] for e in entries]
        assert actions.index("user.create") < actions.index("token.create")  # oldest first
        assert all(e["actor"] for e in entries)
        assert {e["source"] for e in entries if e["action"] == "token.create"} == {"127.0.0.1"}

        out = tmp_path / "audit.csv"
        written = await _tether(cloud, "audit", "--format", "csv", "--output", str(out))
        assert written.returncode == 0, written.stderr
        rows = list(csv.DictReader(io.StringIO(out.read_text())))
        assert [r["action"] for r in rows] == actions
        assert [int(r["id"]) for r in rows] == [e["id"] for e in entries]

        viewer = await _tether(cloud, "user", "create", "vic", "--json")
        token = json.loads(
            (await _tether(cloud, "user", "token", "create", "vic", "--json")).stdout
        )["secret"]
        assert viewer.returncode == 0
        refused = await _tether(cloud, "audit", token=token)
        assert refused.returncode == 1
        assert "403" in refused.stderr


async def test_audit_since_a_local_time_without_offset(tmp_path: Path) -> None:
    """The cloud reads a bare time in no zone of its own: the CLI sends this computer's."""
    async with running_cloud(tmp_path / "cloud") as cloud:
        await _tether(cloud, "user", "create", "olga")
        local = timezone(timedelta(hours=5))  # TZ="XXX-5" below: five hours ahead of UTC
        an_hour_ago = (datetime.now(local) - timedelta(hours=1)).replace(tzinfo=None)
        in_an_hour = an_hour_ago + timedelta(hours=2)
        env = {**cloud.cli_env(), "TZ": "XXX-5"}
        recent = await _tether_env(env, "audit", "--since", an_hour_ago.isoformat())
        assert recent.returncode == 0, recent.stderr
        assert "user.create" in recent.stdout
        later = await _tether_env(env, "audit", "--since", in_an_hour.isoformat())
        assert (later.returncode, later.stdout) == (0, "")


async def _tether_env(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [str(tether_script()), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )


def test_audit_checks_its_output_path_before_asking(stub: Stub, tmp_path: Path) -> None:
    for output in (tmp_path / "nonexistent" / "x", tmp_path):
        done = invoke("audit", "-o", str(output), env=stub.env())
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith(f"error: {output}: ")
    assert stub.seen == []
    stub.answer(200, b'{"id": 1}\n', "application/x-ndjson")
    out = tmp_path / "audit.jsonl"
    done = invoke("audit", "-o", str(out), "--since", "1790000000", env=stub.env())
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == b'{"id": 1}\n'
    assert "since=2026-09-21T14%3A13%3A20%2B00%3A00" in stub.seen[0]


async def test_audit_list_and_export_take_only_what_the_filters_name(tmp_path: Path) -> None:
    async with running_cloud(tmp_path / "cloud") as cloud:
        await _tether(cloud, "user", "create", "olga", "--role", "operator")
        minted = await _tether(cloud, "user", "token", "create", "olga", "--json")
        olga = json.loads(minted.stdout)["secret"]
        made = await _tether(cloud, "token", "create", "--name", "boiler-room", token=olga)
        assert made.returncode == 0, made.stderr
        await _tether(cloud, "token", "create", "--name", "plant-room")

        async def listed(*args: str) -> list[dict[str, object]]:
            done = await _tether(cloud, "audit", "list", *args, "--json")
            assert done.returncode == 0, done.stderr
            entries: list[dict[str, object]] = json.loads(done.stdout)
            return entries

        hers = await listed("--actor", "olga (operator)")
        assert [(e["action"], e["actor"]) for e in hers] == [("token.create", "olga (operator)")]
        family = await listed("--action", "token.*")
        assert [e["actor"] for e in family] == ["bootstrap token (admin)", "olga (operator)"]
        assert {e["action"] for e in await listed("--action", "api-token.*")} == {
            "api-token.create"
        }
        first = await listed("--action", "token.*", "--limit", "1")
        second = await listed(
            "--action", "token.*", "--limit", "1", "--before", str(first[0]["id"])
        )
        assert first + second == family

        shown = await _tether(cloud, "audit", "list", "--action", "token.*", "--limit", "1")
        assert shown.returncode == 0, shown.stderr
        assert "1 audit entries" in shown.stdout
        assert "token.create" in shown.stdout
        assert f"--before {first[0]['id']}" in shown.stdout  # where the next page starts

        exported = await _tether(cloud, "audit", "--actor", "olga (operator)")
        assert exported.returncode == 0, exported.stderr
        assert [json.loads(x)["action"] for x in exported.stdout.splitlines()] == ["token.create"]

        refused = await _tether(cloud, "audit", "list", "--action", "token*")
        assert refused.returncode == 1
        assert "action must be an action (token.create)" in refused.stderr
        assert refused.stderr.endswith("(HTTP 400)\n")
        misplaced = await _tether(cloud, "audit", "--actor", "olga (operator)", "list")
        assert misplaced.returncode == 2
        assert "put the options after `tether audit list`" in misplaced.stderr

        # times without an offset are this computer's (five hours ahead of UTC here)
        local = timezone(timedelta(hours=5))
        an_hour_ago = (datetime.now(local) - timedelta(hours=1)).replace(tzinfo=None)
        env = {**cloud.cli_env(), "TZ": "XXX-5"}
        window = ("--since", an_hour_ago.isoformat(), "--until")
        inside = await _tether_env(
            env, "audit", "list", *window, (an_hour_ago + timedelta(hours=2)).isoformat(), "--json"
        )
        assert inside.returncode == 0, inside.stderr
        assert len(json.loads(inside.stdout)) == len(await listed())
        before = await _tether_env(
            env, "audit", "list", "--until", an_hour_ago.isoformat(), "--json"
        )
        assert (before.returncode, json.loads(before.stdout)) == (0, [])


def test_audit_list_sends_local_times_with_their_offset(stub: Stub) -> None:
    done = tether(
        "audit",
        "list",
        "--action",
        "token.*",
        "--since",
        "2030-01-01T09:00",
        "--until",
        "1790000000",
        "--json",
        env=stub.env(TZ="XXX-5"),
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
    [request] = stub.seen
    assert request.startswith("GET /api/v1/audit?")
    assert "since=2030-01-01T09%3A00%3A00%2B05%3A00" in request
    assert "until=2026-09-21T14%3A13%3A20%2B00%3A00" in request
    assert "action=token.%2A" in request
    assert "limit=50" in request
