"""``tether points | config | logs``: what goes over the wire and what people see."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from tests.cli.stub import Stub, clean_env, invoke, tether


def _query(request_line: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(request_line.split(" ", 1)[1]).query)


def test_log_levels_are_read_in_any_case_and_others_refused(stub: Stub) -> None:
    for given in ("WARNING", "Warning", "warning"):
        stub.seen.clear()
        done = invoke("logs", "GW", "--level", given, env=stub.env())
        assert done.returncode == 0, done.stderr
        assert _query(stub.seen[0])["level"] == ["warning"]
    stub.seen.clear()
    for bogus in ("bogus", "warn", ""):
        done = invoke("logs", "GW", "--level", bogus, env=stub.env())
        assert done.returncode == 2
        assert "debug, info, warning, error, critical" in done.stderr
    assert stub.seen == []


def test_limits_out_of_range_are_refused_like_everywhere(stub: Stub) -> None:
    for args in (
        ("logs", "GW", "--limit", "0"),
        ("logs", "GW", "--limit", "5001"),
        ("points", "query", "GW", "P", "--limit", "0"),
        ("points", "query", "GW", "P", "--limit", "100001"),
        ("command", "list", "--limit", "-1"),
        ("logs", "GW", "--follow", "--interval", "inf"),
    ):
        done = invoke(*args, env=stub.env())
        assert done.returncode == 2, args
    assert stub.seen == []
    assert invoke("logs", "GW", "--limit", "5000", env=stub.env()).returncode == 0
    assert _query(stub.seen[0])["limit"] == ["5000"]


def test_a_time_without_offset_is_this_computers_local_time(stub: Stub) -> None:
    local = stub.env(TZ="IST-5:30")  # POSIX: UTC+05:30, no time-zone database needed
    args = ("points", "query", "GW", "P")
    done = tether(
        *args, "--since", "2026-11-21T00:00", "--until", "2026-11-21 06:30:15Z", env=local
    )
    assert done.returncode == 0, done.stderr
    sent = _query(stub.seen[0])
    assert sent["since"] == ["2026-11-21T00:00:00+05:30"]
    assert sent["until"] == ["2026-11-21T06:30:15+00:00"]
    stub.seen.clear()
    done = tether(*args, "--since", "1790000000.5", env=local)
    assert _query(stub.seen[0])["since"] == ["1790000000.5"]
    for bad in ("yesterday", "nan", "2026-13-01"):
        done = invoke(*args, "--since", bad, env=stub.env())
        assert done.returncode == 2, bad
        assert "--since takes a Unix time or an ISO 8601 time" in done.stderr


def test_times_shown_are_labelled_utc(stub: Stub) -> None:
    stub.answer(
        200,
        json.dumps(
            [{"point_id": "p1", "ts": 1790000000.0, "value": 21.5, "quality": "good"}]
        ).encode(),
    )
    table = invoke("points", "query", "GW", "p1", env=stub.env())
    assert table.returncode == 0, table.stderr
    assert "time (UTC)" in table.stdout
    assert "2026-09-21 14:13:20" in table.stdout
    as_csv = invoke("points", "query", "GW", "p1", "--csv", env=stub.env())
    assert as_csv.stdout.splitlines()[1].startswith("2026-09-21T14:13:20Z,1790000000.0,p1,")
    stub.answer(
        200,
        json.dumps(
            [
                {
                    "ts": 1790000000.0,
                    "level": "warning",
                    "source": "agent",
                    "message": "[/bogus] link slow",
                    "customer_data": False,
                    "fields": {},
                }
            ]
        ).encode(),
    )
    logs = invoke("logs", "GW", env=stub.env())
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout == "2026-09-21 14:13:20Z warning  agent: [/bogus] link slow\n"


def test_config_documents_are_toml_by_name_else_json_and_the_error_says_so(
    stub: Stub, tmp_path: Path
) -> None:
    settings = 'level = "debug"\n'
    misnamed = tmp_path / "logs.txt"
    misnamed.write_text(settings)
    done = invoke("config", "set", "GW", "logs", str(misnamed), env=stub.env())
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: {misnamed}: not JSON (a TOML file's name ends in .toml)")
    broken = tmp_path / "logs.toml"
    broken.write_text("level =\n")
    done = invoke("config", "set", "GW", "logs", str(broken), env=stub.env())
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: {broken}: not TOML: ")
    assert stub.seen == []

    stub.answer(200, b'{"section": "logs", "version": 2}')
    (tmp_path / "logs.toml").write_text(settings)
    done = invoke("config", "set", "GW", "logs", str(tmp_path / "logs.toml"), env=stub.env())
    assert done.returncode == 0, done.stderr
    assert stub.seen == ["PUT /api/v1/gateways/GW/config/logs"]


def test_config_set_help_names_the_sections_in_plain_text() -> None:
    done = invoke("config", "set", "--help", env=clean_env(COLUMNS="200"))
    assert done.returncode == 0
    assert "``" not in done.stdout
    assert "One of agent, connectors, logs." in done.stdout
