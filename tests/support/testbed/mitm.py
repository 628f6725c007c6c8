"""mitmproxy intercepting TLS: a forward proxy that re-signs every site with its own CA.

``start_mitmproxy`` runs ``mitmdump`` from the project's virtualenv with a fresh confdir, so its
CA (subject ``mitmproxy``) is generated there. With ``upstream`` it forwards through another proxy
(e.g. the test bed's squid, which knows the test hostnames) instead of resolving names itself.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.testbed.proc import free_port, is_listening, start_process, stop_process

MITMDUMP = Path(sys.executable).parent / "mitmdump"


def available() -> bool:
    return MITMDUMP.exists()


@dataclass
class MitmProxy:
    host: str
    port: int
    directory: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ca_cert(self) -> Path:
        return self.directory / "mitmproxy-ca-cert.pem"

    def stop(self) -> None:
        stop_process(self.process)
        shutil.rmtree(self.directory, ignore_errors=True)


def start_mitmproxy(
    *, upstream: str | None = None, upstream_ca: Path | None = None, host: str = "127.0.0.1"
) -> MitmProxy:
    directory = Path(tempfile.mkdtemp(prefix="tether-mitm-"))
    port = free_port(host)
    argv = [
        str(MITMDUMP),
        "--quiet",
        "--listen-host",
        host,
        "--listen-port",
        str(port),
        "--set",
        f"confdir={directory}",
    ]
    if upstream:
        argv += ["--mode", f"upstream:{upstream}"]
    if upstream_ca:
        argv += ["--set", f"ssl_verify_upstream_trusted_ca={upstream_ca}"]
    try:
        process = start_process(
            argv,
            log=directory / "mitmdump.log",
            ready=lambda: is_listening(host, port),
            what="mitmdump",
            timeout=30,
        )
    except RuntimeError:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return MitmProxy(host=host, port=port, directory=directory, process=process)


@contextmanager
def mitm_proxy(
    *, upstream: str | None = None, upstream_ca: Path | None = None
) -> Iterator[MitmProxy]:
    proxy = start_mitmproxy(upstream=upstream, upstream_ca=upstream_ca)
    try:
        yield proxy
    finally:
        proxy.stop()
