"""What a gateway's connectors discovered and sent, as the operator API and CLI show it.

A real agent (in the test's event loop) runs the simulated building the cloud configured; once
its spool is drained, the points, devices and observations the cloud serves are compared with
the building model itself (same seed: the same ids, names, units and values).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from datetime import UTC, datetime
from typing import Any

import httpx
from tests.e2e.telemetry_agent import connectors_config, stored_value
from tests.support.cloudproc import Cloud, StartAgent, tether_script, wait_for

from tether.gateway.connectors.simulated import BuildingModel, SimulatedBuildingConfig

#: One reading of each of the building's 96 points every 0.2 s.
BUILDING = {"seed": 11, "rate": 0.0, "poll_interval": 0.2}
POINT = "simulated-building/ahu-1/supply-air-temp"


async def get(api: httpx.AsyncClient, path: str, **params: Any) -> Any:
    response = await api.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


async def tether(cloud: Cloud, *args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        str(tether_script()),
        *args,
        env=cloud.cli_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    return out.decode()


async def test_discovery_observations_api_and_cli(
    cloud: Cloud, api: httpx.AsyncClient, start_agent: StartAgent
) -> None:
    gw = await start_agent("query")
    base = f"/api/v1/gateways/{gw.gateway_id}"
    response = await api.put(f"{base}/config/connectors", json=connectors_config(**BUILDING))
    assert response.status_code == 200, response.text

    async def every_point_has_a_value() -> list[dict[str, Any]] | None:
        points: list[dict[str, Any]] = await get(api, f"{base}/points")
        enough = len(points) == 96 and all(p["last_ts"] is not None for p in points)
        series = await get(api, f"{base}/observations", point=POINT)
        return points if enough and len(series) >= 8 else None

    await wait_for(every_point_has_a_value, what="readings of every point")
    # Switch the building off and let the spool drain: from then on the data stands still.
    response = await api.put(
        f"{base}/config/connectors", json=connectors_config(enabled=False, **BUILDING)
    )
    version = response.json()["version"]
    await wait_for(
        lambda: _applied(api, base, version), what="the connector switched off on the gateway"
    )
    spool = gw.agent.spool
    assert spool is not None
    await wait_for(
        lambda: _drained(spool), what="the gateway's spool drained", within=20, interval=0.1
    )

    model = BuildingModel(SimulatedBuildingConfig(**BUILDING))
    found = model.discovery()

    # Discovery: every device and point, with its name, kind and unit.
    devices = await get(api, f"{base}/devices")
    seen = [(d["device_id"], d["name"], d["kind"], d["model"], d["connector"]) for d in devices]
    assert seen == [
        (d.device_id, d.name, d.kind, d.model, "sim")
        for d in sorted(found.devices, key=lambda d: d.device_id)
    ]
    assert {d["location"] for d in devices} == {"Simulated Building"}
    points = await get(api, f"{base}/points")
    assert [(p["point_id"], p["device_id"], p["name"], p["kind"], p["unit"]) for p in points] == [
        (p.point_id, p.device_id, p.name, p.kind, p.unit)
        for p in sorted(found.points, key=lambda p: p.point_id)
    ]
    by_id = {p["point_id"]: p for p in points}
    assert (by_id[POINT]["unit"], by_id[POINT]["kind"]) == ("°C", "numeric")
    energy = by_id["simulated-building/meter-1/energy"]
    assert (energy["unit"], energy["kind"]) == ("kWh", "counter")
    assert by_id["simulated-building/ahu-1/fan-status"]["kind"] == "boolean"
    # Each point's latest value is the building's reading at that instant.
    for p in points:
        reading = {o.point_id: o.value for o in model.observations_at(p["last_ts"])}
        assert p["last_value"] == stored_value(reading[p["point_id"]]), p

    # Observations of one point: oldest first, the building's values.
    series = await get(api, f"{base}/observations", point=POINT)
    ts = [o["ts"] for o in series]
    assert ts == sorted(ts)
    assert len(ts) >= 8
    for o in series:
        assert o["point_id"] == POINT
        assert o["quality"] == "good"
        [value] = [r.value for r in model.observations_at(o["ts"]) if r.point_id == POINT]
        assert o["value"] == value

    async def window(**params: Any) -> list[float]:
        rows = await get(api, f"{base}/observations", point=POINT, **params)
        return [o["ts"] for o in rows]

    assert await window(since=ts[2], until=ts[5]) == ts[2:5]  # since inclusive, until exclusive
    assert await window(after=ts[3]) == ts[4:]  # the tail's cursor is exclusive
    assert await window(limit=2) == ts[:2]
    assert await window(since=ts[-3], limit=1) == [ts[-3]]
    iso = datetime.fromtimestamp(ts[2], UTC).isoformat()
    assert (await window(since=iso))[0] in (ts[2], ts[3])  # to the microsecond
    assert len(await get(api, f"{base}/observations", limit=1000)) > len(series)  # all points
    for bad in ({"limit": "0"}, {"limit": "many"}, {"since": "yesterday"}):
        response = await api.get(f"{base}/observations", params=bad)
        assert response.status_code == 400, (bad, response.text)

    # The CLI: the same window as CSV, and the point list as JSON.
    out = await tether(
        cloud,
        "points",
        "query",
        gw.gateway_id,
        POINT,
        "--csv",
        "--since",
        repr(ts[1]),
        "--until",
        repr(ts[6]),
    )
    header, *rows = list(csv.reader(io.StringIO(out)))
    assert header == ["time", "ts", "point_id", "value", "quality"]
    assert [float(r[1]) for r in rows] == ts[1:6]
    assert [float(r[3]) for r in rows] == [o["value"] for o in series[1:6]]
    assert {r[2] for r in rows} == {POINT}
    assert rows[0][0] == datetime.fromtimestamp(ts[1], UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    listed = json.loads(await tether(cloud, "points", "list", gw.gateway_id, "--json"))
    assert listed == points


async def _applied(api: httpx.AsyncClient, base: str, version: int) -> bool:
    sections = await get(api, f"{base}/config")
    return any(s["section"] == "connectors" and s["applied_version"] == version for s in sections)


async def _drained(spool: Any) -> bool:
    depth = await spool.depth()
    return bool(depth.observations == 0)
