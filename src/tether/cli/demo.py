"""``tether demo``: a cloud, enrollment tokens and N enrolled gateways on loopback, in one go."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import ssl
import sys
from pathlib import Path

import httpx
import typer

from tether.cli.output import console
from tether.cli.runtime import run_async, setup_logging


def tether_command(cwd: Path | None = None) -> str:
    """How to run this installation's ``tether`` from *cwd* (default: here): the script beside
    this interpreter, relative when it is below *cwd* (``.venv/bin/tether`` in a checkout), else
    absolute; plain ``tether`` when that is what the shell would find anyway."""
    script = Path(sys.executable).parent / "tether"
    if not script.is_file():
        return "tether"
    found = shutil.which("tether")
    if found is not None and Path(found).resolve() == script.resolve():
        return "tether"
    here = (cwd or Path.cwd()).resolve()
    try:
        return str(script.absolute().relative_to(here))
    except ValueError:
        return str(script.absolute())


def hints(tether: str, env_file: Path, gateway: str, url: str, ca: Path) -> list[str]:
    """What to try against a running demo, each a whole shell line: *tether* is how to run the
    command, *gateway* one demo gateway, *url* the cloud and *ca* its platform CA file."""
    from tether.netreq.serve import MANIFEST_PATH

    return [
        f"source {env_file}",
        f"{tether} gateways list",
        f"{tether} command send {gateway} ping --wait",
        f"{tether} command send {gateway} metrics --wait",
        f"{tether} command list",
        f"{tether} points list {gateway}",
        f"{tether} points tail {gateway}",
        f"{tether} token create --name another-building",
        # the demo's own manifest, as its cloud serves it (not one for the default hostname)
        f"{tether} net docs --manifest {url}{MANIFEST_PATH} --ca {ca}",
        f"curl --cacert {ca} {url}/api/v1/openapi.json",
    ]


def _free_port(preferred: int) -> int:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server itself does
        try:
            s.bind(("127.0.0.1", preferred))  # 0 asks the kernel for any free port
        except OSError:
            s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _run_demo(gateways: int, seconds: float | None, data_dir: Path, port: int) -> None:
    from tether.cloud.accounts import ADMIN_PASSWORD_FILE
    from tether.cloud.app import ADMIN_TOKEN_FILE, run
    from tether.cloud.settings import load_settings
    from tether.gateway.agent import Agent
    from tether.gateway.identity import enroll
    from tether.gateway.settings import load_agent_settings

    settings = load_settings(
        None,
        data_dir=data_dir / "cloud",
        listen_port=port,
        hostname="127.0.0.1",
        heartbeat_interval=15.0,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    ready = asyncio.Event()
    cloud = loop.create_task(run(settings, ready=ready, stop=stop))
    await ready.wait()
    admin_token = (settings.data_dir / ADMIN_TOKEN_FILE).read_text().strip()
    ca_path = settings.pki_dir / "ca.pem"
    api = httpx.AsyncClient(
        base_url=settings.public_url,
        verify=ssl.create_default_context(cafile=str(ca_path)),
        headers={"Authorization": f"Bearer {admin_token}"},
        trust_env=False,
    )
    agents: list[asyncio.Task[None]] = []
    with console.status("enrolling gateways…"):
        for i in range(1, gateways + 1):
            response = await api.post(
                "/api/v1/enrollment-tokens", json={"name": f"demo-building-{i}"}
            )
            response.raise_for_status()
            gw_dir = data_dir / f"gateway-{i}"
            agent_settings = load_agent_settings(gw_dir, trust_env=False, reconnect_cap=5.0)
            identity = await enroll(
                response.json()["enrollment_code"], agent_settings.identity_dir, trust_env=False
            )
            connectors = {
                "instances": {
                    "building": {
                        "connector": "simulated-building",
                        "config": {
                            "seed": i,
                            "building": f"Demo Building {i}",
                            "poll_interval": 5.0,
                        },
                    }
                }
            }
            put = await api.put(
                f"/api/v1/gateways/{identity.gateway_id}/config/connectors", json=connectors
            )
            put.raise_for_status()
            agent = Agent(agent_settings, identity)
            agents.append(loop.create_task(agent.run(stop)))
    for _ in range(100):
        listing = (await api.get("/api/v1/gateways")).json()
        if sum(g["linked"] for g in listing) == gateways:
            break
        await asyncio.sleep(0.1)
    await api.aclose()
    first = listing[0]["id"] if listing else "GATEWAY"
    console.rule("[bold]tether demo is running")
    console.print(
        f"cloud  {settings.public_url}  ({settings.database.split(':')[0]}, "
        f"data in {settings.data_dir})",
        soft_wrap=True,
    )
    console.print(
        f"console  {settings.public_url}/console/  (user admin, password in "
        f"{(settings.data_dir / ADMIN_PASSWORD_FILE).resolve()})",
        highlight=False,
        soft_wrap=True,
    )
    console.print(f"{sum(g['linked'] for g in listing)}/{gateways} gateways linked\n")
    env_file = data_dir / "env.sh"
    env_file.write_text(
        f"export TETHER_URL={settings.public_url}\n"
        f"export TETHER_TOKEN=$(cat {(settings.data_dir / ADMIN_TOKEN_FILE).resolve()})\n"
        f"export TETHER_CA={ca_path.resolve()}\n"
    )
    console.print("In another terminal:\n", style="bold")
    tries = hints(
        tether_command(), env_file.resolve(), first, settings.public_url, ca_path.resolve()
    )
    for line in tries:  # whole lines, never wrapped, to be copied as they are
        console.print(f"  {line}", highlight=False, soft_wrap=True)
    console.print(
        "\nCtrl-C stops the demo."
        if seconds is None
        else f"\nThe demo stops by itself in {seconds:.0f} s."
    )
    if seconds is not None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
        stop.set()
    await asyncio.gather(cloud, *agents, return_exceptions=True)
    console.print("demo stopped")


def demo(
    gateways: int = typer.Option(3, "--gateways", "-n", min=1, max=500, help="How many."),
    seconds: float | None = typer.Option(None, "--for", help="Stop after this many seconds."),
    data_dir: Path = typer.Option(
        Path("var/demo"),
        "--data-dir",
        help="Where the cloud, the gateways and env.sh are kept (emptied first unless --keep).",
    ),
    port: int = typer.Option(8443, "--port", help="Preferred port (a free one if taken)."),
    keep: bool = typer.Option(False, "--keep", help="Keep the previous demo's state."),
) -> None:
    """Run a cloud and N enrolled gateways on loopback, and print what to try next."""
    setup_logging("warning")
    if not keep and data_dir.exists():
        shutil.rmtree(data_dir)
    run_async(_run_demo(gateways, seconds, data_dir, _free_port(port)))
