"""Command handlers, registered in one explicit table (:data:`HANDLERS`).

A handler takes a :class:`CommandContext` and returns a JSON-able result, or raises
:class:`CommandFailed` with a message for the operator. System actions (reboot, shutdown,
restarting another service) run a hook configured in ``agent.toml``; without one the command is
refused with a result that says so — a laptop running the agent must not reboot.
"""

from __future__ import annotations

import asyncio
import os
import platform
import shutil
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psutil

from tether import __version__
from tether.protocol.config import LOG_LEVEL_NAMES

if TYPE_CHECKING:
    from tether.gateway.agent import Agent

__all__ = ["HANDLERS", "CommandContext", "CommandFailed", "Handler"]

HOOK_TIMEOUT = 60.0

#: Runtime settings an operator may change with ``set-config`` (name → type).
SETTABLE: Mapping[str, type] = {"log_level": str, "health_interval": float, "label": str}
_LOG_LEVELS = frozenset(LOG_LEVEL_NAMES)  # the one list every log level setting takes


class CommandFailed(Exception):
    """The command ran and failed; ``str(exc)`` is shown to the operator."""


@dataclass(frozen=True, slots=True)
class CommandContext:
    command_id: str
    args: dict[str, Any]
    agent: Agent


Handler = Callable[[CommandContext], Awaitable[dict[str, Any]]]


async def ping(ctx: CommandContext) -> dict[str, Any]:
    return {"pong": True, "agent_version": __version__, "time": time.time()}


def _temperatures() -> dict[str, float]:
    read = getattr(psutil, "sensors_temperatures", None)
    if read is None:
        return {}
    try:
        sensors = read()
    except (OSError, RuntimeError):
        return {}
    out: dict[str, float] = {}
    for chip, entries in sensors.items():
        for i, entry in enumerate(entries):
            out[f"{chip}/{entry.label or i}"] = round(entry.current, 1)
    return out


def collect_metrics(data_dir: str) -> dict[str, Any]:
    """CPU, memory, disk, temperatures where the host has sensors; blocking (0.2 s sample)."""
    vm = psutil.virtual_memory()
    disk = shutil.disk_usage(data_dir)
    proc = psutil.Process()
    return {
        "cpu_percent": psutil.cpu_percent(interval=0.2),
        "cpu_count": psutil.cpu_count(),
        "load_average": list(os.getloadavg()),
        "memory": {"total": vm.total, "available": vm.available, "percent": vm.percent},
        "disk": {
            "path": data_dir,
            "total": disk.total,
            "free": disk.free,
            "percent": round(100 * (disk.total - disk.free) / disk.total, 1),
        },
        "temperatures_c": _temperatures(),
        "uptime_s": round(time.time() - psutil.boot_time()),
        "agent": {
            "version": __version__,
            "rss": proc.memory_info().rss,
            "python": platform.python_version(),
        },
    }


async def metrics(ctx: CommandContext) -> dict[str, Any]:
    return await asyncio.to_thread(collect_metrics, str(ctx.agent.settings.data_dir))


async def _run_hook(ctx: CommandContext, name: str, extra: list[str]) -> dict[str, Any]:
    argv = ctx.agent.settings.hooks.get(name)
    if not argv:
        raise CommandFailed(
            f"refused: no {name} hook is configured on this host "
            f"(set hooks.{name} in agent.toml on an appliance)"
        )
    proc = await asyncio.create_subprocess_exec(
        *argv, *extra, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), HOOK_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise CommandFailed(f"{name} hook did not finish within {HOOK_TIMEOUT:.0f} s") from None
    text = output.decode(errors="replace")[-2000:]
    if proc.returncode != 0:
        raise CommandFailed(f"{name} hook exited with {proc.returncode}: {text.strip()}")
    return {"hook": name, "exit_code": 0, "output": text}


async def reboot(ctx: CommandContext) -> dict[str, Any]:
    return await _run_hook(ctx, "reboot", [])


async def shutdown(ctx: CommandContext) -> dict[str, Any]:
    return await _run_hook(ctx, "shutdown", [])


async def restart_service(ctx: CommandContext) -> dict[str, Any]:
    """``service=agent`` (default) restarts the agent's link and components in place; any other
    service name goes to the ``restart_service`` hook."""
    service = str(ctx.args.get("service", "agent"))
    if service in {"agent", "tether-agent"}:
        ctx.agent.request_restart("restart-service command")
        return {"service": "agent", "restarting": True}
    return await _run_hook(ctx, "restart_service", [service])


async def set_config(ctx: CommandContext) -> dict[str, Any]:
    if not ctx.args:
        raise CommandFailed(f"set-config needs at least one of {sorted(SETTABLE)}")
    changes: dict[str, Any] = {}
    for key, value in ctx.args.items():
        kind = SETTABLE.get(key)
        if kind is None:
            raise CommandFailed(f"unknown setting {key!r}; settable: {sorted(SETTABLE)}")
        try:
            converted = kind(value)
        except (TypeError, ValueError):
            raise CommandFailed(f"setting {key!r} needs a {kind.__name__}") from None
        if key == "log_level" and converted not in _LOG_LEVELS:
            raise CommandFailed(f"log_level must be one of {', '.join(LOG_LEVEL_NAMES)}")
        if key == "health_interval" and not 5 <= converted <= 86400:
            raise CommandFailed("health_interval must be within 5..86400 seconds")
        changes[key] = converted
    return {"config": ctx.agent.apply_runtime_config(changes)}


HANDLERS: Mapping[str, Handler] = {
    "ping": ping,
    "metrics": metrics,
    "reboot": reboot,
    "shutdown": shutdown,
    "restart-service": restart_service,
    "set-config": set_config,
}
