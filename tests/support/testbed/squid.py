"""squid as a forward proxy for tests: CONNECT, optional basic authentication, denied domains.

``start_squid`` writes a config into a fresh directory, starts ``squid -N`` on a free loopback
port, waits until it accepts connections, and ``Squid.stop`` stops it by PID and removes its
files. Squid resolves names only from the generated hosts file (``hosts``), so a test never
depends on real DNS. As root, squid drops to the ``proxy`` user, so the directory is given to it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.testbed.proc import free_port, is_listening, start_process, stop_process

SQUID = "/usr/sbin/squid"
NCSA_AUTH = "/usr/lib/squid/basic_ncsa_auth"
SQUID_USER = "proxy"


def available() -> bool:
    return Path(SQUID).exists()


def _htpasswd_line(user: str, password: str) -> str:
    hashed = subprocess.run(
        ["openssl", "passwd", "-apr1", "-stdin"],
        input=password,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return f"{user}:{hashed}\n"


@dataclass
class Squid:
    host: str
    port: int
    directory: Path
    process: subprocess.Popen[bytes]
    credentials: tuple[str, str] | None

    @property
    def url(self) -> str:
        """The proxy URL with credentials, as ``HTTPS_PROXY`` takes it."""
        if self.credentials:
            user, password = self.credentials
            return f"http://{user}:{password}@{self.host}:{self.port}"
        return f"http://{self.host}:{self.port}"

    @property
    def url_without_credentials(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log(self) -> str:
        parts = []
        for name in ("cache.log", "access.log"):
            with contextlib.suppress(OSError):
                parts.append((self.directory / name).read_text(errors="replace"))
        return "\n".join(parts)

    def stop(self) -> None:
        # A second SIGTERM during shutdown makes squid skip its remaining event-loop ticks
        # (about a second); it still exits normally and removes its PID file.
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=0.1)
        stop_process(self.process)
        shutil.rmtree(self.directory, ignore_errors=True)


def render_config(
    *,
    host: str,
    port: int,
    directory: Path,
    auth: bool,
    denied_domains: Sequence[str],
    allowed_ports: Sequence[int] | None,
    read_timeout: int | None,
    client_lifetime: int | None,
    connect_timeout: int,
) -> str:
    d = directory
    lines = [
        f"http_port {host}:{port}",
        f"pid_filename {d}/squid.pid",
        f"cache_log {d}/cache.log",
        f"access_log stdio:{d}/access.log",
        f"coredump_dir {d}",
        f"hosts_file {d}/hosts",
        "cache deny all",
        "cache_mem 4 MB",
        "pinger_enable off",
        "shutdown_lifetime 0 seconds",
        # Names come from the hosts file only; DNS queries go nowhere outside the machine.
        "dns_nameservers 127.0.0.1",
        "dns_timeout 5 seconds",
        f"connect_timeout {connect_timeout} seconds",
        "acl CONNECT method CONNECT",
    ]
    if read_timeout is not None:
        lines.append(f"read_timeout {read_timeout} seconds")
    if client_lifetime is not None:
        lines.append(f"client_lifetime {client_lifetime} seconds")
    if allowed_ports is not None:
        lines.append("acl allowed_ports port " + " ".join(str(p) for p in allowed_ports))
        lines.append("http_access deny CONNECT !allowed_ports")
    if denied_domains:
        lines.append("acl denied_domains dstdomain " + " ".join(denied_domains))
        lines.append("http_access deny denied_domains")
    if auth:
        lines += [
            f"auth_param basic program {NCSA_AUTH} {d}/htpasswd",
            "auth_param basic realm tether-test-proxy",
            "auth_param basic children 2",
            "acl authenticated proxy_auth REQUIRED",
            "http_access allow authenticated",
            "http_access deny all",
        ]
    else:
        lines.append("http_access allow all")
    return "\n".join(lines) + "\n"


def start_squid(
    *,
    hosts: Mapping[str, str] | None = None,
    credentials: tuple[str, str] | None = None,
    denied_domains: Sequence[str] = (),
    allowed_ports: Sequence[int] | None = None,
    read_timeout: int | None = None,
    client_lifetime: int | None = None,
    connect_timeout: int = 5,
    host: str = "127.0.0.1",
    port: int | None = None,
) -> Squid:
    """Start squid; ``hosts`` maps each hostname squid may need to an IP address.

    ``denied_domains`` uses squid's dstdomain syntax (``.example.test`` covers subdomains);
    ``read_timeout`` (seconds) also bounds how long an idle CONNECT tunnel lives. ``port``
    restarts squid where a previous instance listened (a site's proxy reconfigured).
    """
    directory = Path(tempfile.mkdtemp(prefix="tether-squid-"))
    directory.chmod(0o755)
    (directory / "hosts").write_text(
        "".join(f"{ip} {name}\n" for name, ip in (hosts or {}).items())
    )
    if credentials:
        (directory / "htpasswd").write_text(_htpasswd_line(*credentials))
    if os.geteuid() == 0:
        user = pwd.getpwnam(SQUID_USER)
        for path in [directory, *directory.iterdir()]:
            os.chown(path, user.pw_uid, user.pw_gid)
    last_error: Exception | None = None
    fixed = port
    for _attempt in range(1 if fixed else 3):  # a free port may be taken before squid binds it
        port = fixed or free_port(host)
        config = directory / "squid.conf"
        config.write_text(
            render_config(
                host=host,
                port=port,
                directory=directory,
                auth=credentials is not None,
                denied_domains=denied_domains,
                allowed_ports=allowed_ports,
                read_timeout=read_timeout,
                client_lifetime=client_lifetime,
                connect_timeout=connect_timeout,
            )
        )
        try:
            process = start_process(
                [SQUID, "-N", "-f", str(config)],
                log=directory / "stdout.log",
                ready=lambda port=port: is_listening(host, port),  # type: ignore[misc]
                what="squid",
            )
        except RuntimeError as exc:
            last_error = exc
            continue
        return Squid(
            host=host, port=port, directory=directory, process=process, credentials=credentials
        )
    shutil.rmtree(directory, ignore_errors=True)
    raise RuntimeError(f"squid did not start: {last_error}")


@contextmanager
def squid_proxy(**kwargs: object) -> Iterator[Squid]:
    """``start_squid`` as a context manager (same keyword arguments)."""
    proxy = start_squid(**kwargs)  # type: ignore[arg-type]
    try:
        yield proxy
    finally:
        proxy.stop()
