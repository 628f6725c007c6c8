"""nginx as a TLS-terminating reverse proxy in front of a test application server.

With ``websocket=False`` it forwards requests without the ``Upgrade``/``Connection`` headers
(nginx's default), so a WebSocket upgrade never reaches the application: the middlebox that
breaks tier 1 while long-poll still works.

As a deployment's load balancer in front of the cloud: ``server_cert`` (from the platform CA),
``client_ca`` (``ssl_verify_client on``), ``upstream_ca``/``upstream_name`` (the upstream's
certificate verified) and ``client_cert_header`` (the verified client certificate passed on as
``$ssl_client_escaped_cert``). ``port`` restarts it on the port a previous instance had.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.testbed.certs import ServerCert, TestCA
from tests.support.testbed.proc import free_port, is_listening, start_process, stop_process

NGINX = "/usr/sbin/nginx"


def available() -> bool:
    return Path(NGINX).exists()


@dataclass
class Nginx:
    host: str
    port: int
    directory: Path
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        stop_process(self.process)
        shutil.rmtree(self.directory, ignore_errors=True)


def render_config(
    *,
    directory: Path,
    host: str,
    port: int,
    cert: Path,
    key: Path,
    upstream: str,
    websocket: bool,
    read_timeout: int,
    user: str | None,
    client_ca: Path | None = None,
    upstream_ca: Path | None = None,
    upstream_name: str | None = None,
    client_cert_header: str | None = None,
) -> str:
    d = directory
    upgrade = (
        "proxy_set_header Upgrade $http_upgrade;\n"
        '            proxy_set_header Connection "upgrade";\n            '
        if websocket
        else ""
    )
    client = (
        f"ssl_verify_client on;\n        ssl_client_certificate {client_ca};\n        "
        if client_ca
        else ""
    )
    if upstream_ca:
        upstream_tls = (
            "proxy_ssl_verify on;\n"
            f"            proxy_ssl_trusted_certificate {upstream_ca};\n"
            "            proxy_ssl_protocols TLSv1.2 TLSv1.3;\n"
            "            proxy_ssl_server_name on;\n"
            + (f"            proxy_ssl_name {upstream_name};\n" if upstream_name else "")
        )
    else:
        upstream_tls = "proxy_ssl_verify off;\n"
    header = (
        f"proxy_set_header {client_cert_header} $ssl_client_escaped_cert;\n            "
        if client_cert_header
        else ""
    )
    user_line = f"user {user};\n" if user else ""
    return f"""{user_line}daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 128; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen {host}:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        {client}location / {{
            proxy_pass {upstream};
            {upstream_tls}            proxy_http_version 1.1;
            proxy_set_header Host $host;
            {header}{upgrade}proxy_read_timeout {read_timeout}s;
            proxy_buffering off;
        }}
    }}
}}
"""


def start_nginx(
    *,
    ca: TestCA | None = None,
    names: list[str] | None = None,
    upstream: str,
    websocket: bool = False,
    read_timeout: int = 60,
    host: str = "127.0.0.1",
    port: int | None = None,
    server_cert: ServerCert | None = None,
    client_ca: Path | None = None,
    upstream_ca: Path | None = None,
    upstream_name: str | None = None,
    client_cert_header: str | None = None,
) -> Nginx:
    """Serve ``names`` with a certificate from ``ca`` (or ``server_cert`` as given) and proxy
    to ``upstream`` (a URL)."""
    if server_cert is None:
        if ca is None or not names:
            raise ValueError("start_nginx needs ca and names, or server_cert")
        server_cert = ca.issue_server(names)
    directory = Path(tempfile.mkdtemp(prefix="tether-nginx-"))
    directory.chmod(0o755)
    cert, key = server_cert.write(directory)
    user = None
    if os.geteuid() == 0:  # workers drop to nobody; the master reads the key as root
        nobody = pwd.getpwnam("nobody")
        user = f"nobody {grp.getgrgid(nobody.pw_gid).gr_name}"
        os.chown(directory, nobody.pw_uid, nobody.pw_gid)
    port = port or free_port(host)
    config = directory / "nginx.conf"
    config.write_text(
        render_config(
            directory=directory,
            host=host,
            port=port,
            cert=cert,
            key=key,
            upstream=upstream,
            websocket=websocket,
            read_timeout=read_timeout,
            user=user,
            client_ca=client_ca,
            upstream_ca=upstream_ca,
            upstream_name=upstream_name,
            client_cert_header=client_cert_header,
        )
    )
    try:
        process = start_process(
            [NGINX, "-e", str(directory / "error.log"), "-p", str(directory), "-c", str(config)],
            log=directory / "stdout.log",
            ready=lambda: is_listening(host, port),
            what="nginx",
        )
    except RuntimeError:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return Nginx(host=host, port=port, directory=directory, process=process)


@contextmanager
def nginx_proxy(
    *,
    ca: TestCA,
    names: list[str],
    upstream: str,
    websocket: bool = False,
    read_timeout: int = 60,
) -> Iterator[Nginx]:
    proxy = start_nginx(
        ca=ca, names=names, upstream=upstream, websocket=websocket, read_timeout=read_timeout
    )
    try:
        yield proxy
    finally:
        proxy.stop()


class LoadBalancer:
    """nginx terminating TLS in front of a cloud, restarted on its port with other settings.

    It presents ``server_cert`` (issued by the platform CA for the name gateways dial),
    requires a client certificate from ``ca_path`` (the platform CA), verifies the cloud's
    certificate against the same CA under ``upstream_name``, and passes the client certificate
    on in ``client_cert_header``.
    """

    def __init__(
        self,
        *,
        upstream: str,
        server_cert: ServerCert,
        ca_path: Path,
        upstream_name: str,
        client_cert_header: str,
    ) -> None:
        self.upstream = upstream
        self.server_cert = server_cert
        self.ca_path = ca_path
        self.upstream_name = upstream_name
        self.client_cert_header = client_cert_header
        self.proxy: Nginx | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(
        self, *, websocket: bool, read_timeout: int = 60, pass_certificate: bool = True
    ) -> None:
        """(Re)start nginx; ``websocket`` forwards upgrades, ``read_timeout`` cuts slow answers
        (504), and without ``pass_certificate`` the cloud never hears who the client is."""
        self.stop()
        self.proxy = start_nginx(
            upstream=self.upstream,
            websocket=websocket,
            read_timeout=read_timeout,
            port=self.port,
            server_cert=self.server_cert,
            client_ca=self.ca_path,
            upstream_ca=self.ca_path,
            upstream_name=self.upstream_name,
            client_cert_header=self.client_cert_header if pass_certificate else None,
        )
        self.port = self.proxy.port

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None
