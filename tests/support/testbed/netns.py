"""A firewalled "site" in network namespaces: the gateway behind a router that runs nftables.

Topology (all addresses in 10.200.N.0/24, chosen unused on this host; that traffic never leaves
the machine)::

    [gateway ns] 10.200.N.2/30 ── 10.200.N.1/30 [firewall ns] 10.200.N.14/29 ── [host] 10.200.N.9,
                                   dnsmasq :53     nftables forward chain         10.200.N.10/29
                                                   + masquerade towards the host

The gateway's default route and resolver are the firewall (dnsmasq, which forwards to a DNS
server the test runs on the host side and can fill nftables sets). The test's "internet" servers
bind the host-side addresses. ``ip netns exec`` gives the gateway namespace its own resolv.conf
from ``/etc/netns/<name>/resolv.conf``, created here and removed with the site.

Root only. :meth:`Site.destroy` removes everything even after a partial set-up.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.testbed.proc import log_tail, start_process, stop_process

IP = shutil.which("ip") or "/usr/sbin/ip"
NFT = shutil.which("nft") or "/usr/sbin/nft"
DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
NETNS_ETC = Path("/etc/netns")
_SERIAL = itertools.count()


def available() -> str | None:
    """None when sites can be built here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth pairs, nftables)"
    for tool in (IP, NFT, DNSMASQ):
        if not Path(tool).exists():
            return f"{tool} is not installed (scripts/sysdeps.sh installs it)"
    return None


def run(argv: Sequence[str], *, netns: str | None = None, stdin: str | None = None) -> str:
    full = [IP, "netns", "exec", netns, *argv] if netns else list(argv)
    done = subprocess.run(
        full, check=False, input=stdin, capture_output=True, text=True, timeout=30
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(full)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def _free_subnet() -> int:
    used = run([IP, "-4", "-o", "addr"]) + run([IP, "-4", "route"])
    start = os.getpid() % 200 + 20
    for offset in range(200):
        n = (start + offset) % 250 + 1
        if f"10.200.{n}." not in used:
            return n
    raise RuntimeError("no free 10.200.N.0/24 on this host")


@dataclass
class Site:
    tag: str
    subnet: int
    directory: Path
    created_netns: list[str] = field(default_factory=list)
    created_links: list[str] = field(default_factory=list)
    dnsmasq: subprocess.Popen[bytes] | None = None

    @property
    def gateway_ns(self) -> str:
        return f"tether-gw-{self.tag}"

    @property
    def firewall_ns(self) -> str:
        return f"tether-fw-{self.tag}"

    @property
    def gateway_ip(self) -> str:
        return f"10.200.{self.subnet}.2"

    @property
    def firewall_inside_ip(self) -> str:
        return f"10.200.{self.subnet}.1"

    @property
    def firewall_outside_ip(self) -> str:
        return f"10.200.{self.subnet}.14"

    @property
    def host_ips(self) -> tuple[str, str]:
        return (f"10.200.{self.subnet}.9", f"10.200.{self.subnet}.10")

    @property
    def _host_link(self) -> str:
        return f"tth{self.tag}"[:15]

    def build(self) -> None:
        n = self.subnet
        gw, fw = self.gateway_ns, self.firewall_ns
        for ns in (gw, fw):
            run([IP, "netns", "add", ns])
            self.created_netns.append(ns)
        inside_gw, inside_fw = f"ttg{self.tag}"[:15], f"ttf{self.tag}"[:15]
        outside_fw, host = f"tto{self.tag}"[:15], self._host_link
        run([IP, "link", "add", inside_gw, "type", "veth", "peer", "name", inside_fw])
        run([IP, "link", "set", inside_gw, "netns", gw])
        run([IP, "link", "set", inside_fw, "netns", fw])
        run([IP, "link", "add", host, "type", "veth", "peer", "name", outside_fw])
        self.created_links.append(host)
        run([IP, "link", "set", outside_fw, "netns", fw])
        for address in self.host_ips:
            run([IP, "addr", "add", f"{address}/29", "dev", host])
        run([IP, "link", "set", host, "up"])
        run([IP, "link", "set", "lo", "up"], netns=gw)
        run([IP, "addr", "add", f"10.200.{n}.2/30", "dev", inside_gw], netns=gw)
        run([IP, "link", "set", inside_gw, "up"], netns=gw)
        run([IP, "route", "add", "default", "via", self.firewall_inside_ip], netns=gw)
        run([IP, "link", "set", "lo", "up"], netns=fw)
        run([IP, "addr", "add", f"10.200.{n}.1/30", "dev", inside_fw], netns=fw)
        run([IP, "addr", "add", f"{self.firewall_outside_ip}/29", "dev", outside_fw], netns=fw)
        run([IP, "link", "set", inside_fw, "up"], netns=fw)
        run([IP, "link", "set", outside_fw, "up"], netns=fw)
        run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"], netns=fw)
        # The host knows no route back to the gateway's subnet: the firewall masquerades.
        run(
            [NFT, "-f", "-"],
            netns=fw,
            stdin=(
                "table ip tether_test_nat {\n"
                "  chain postrouting {\n"
                "    type nat hook postrouting priority srcnat; policy accept;\n"
                f'    oifname "{outside_fw}" masquerade\n'
                "  }\n"
                "}\n"
            ),
        )
        etc = NETNS_ETC / gw
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(f"nameserver {self.firewall_inside_ip}\n")

    def load_firewall(self, ruleset: str) -> str:
        """Load a generated nftables ruleset into the firewall; put the gateway in its set.

        Returns the table name.
        """
        match = re.search(r"^table inet (\S+) \{", ruleset, re.M)
        if match is None:
            raise ValueError("no 'table inet NAME {' in the ruleset")
        table = match.group(1)
        path = self.directory / "site.nft"
        path.write_text(ruleset)
        run([NFT, "-f", str(path)], netns=self.firewall_ns)
        run(
            [NFT, "add", "element", "inet", table, "gateways4", f"{{ {self.gateway_ip} }}"],
            netns=self.firewall_ns,
        )
        return table

    def nft(self, *args: str) -> str:
        return run([NFT, *args], netns=self.firewall_ns)

    def start_dns(self, upstream: str, extra_config: str = "") -> None:
        """dnsmasq on the firewall's inside address, forwarding to ``upstream`` (IP#PORT)."""
        conf = self.directory / "dnsmasq.conf"
        log = self.directory / "dnsmasq.log"
        conf.write_text(
            "\n".join(
                [
                    "port=53",
                    f"listen-address={self.firewall_inside_ip}",
                    "bind-interfaces",
                    "no-resolv",
                    "no-hosts",
                    "cache-size=0",  # every answer passes through, so sets are always filled
                    "user=root",
                    f"pid-file={self.directory / 'dnsmasq.pid'}",
                    "log-queries",
                    f"server={upstream}",
                    extra_config,
                ]
            )
            + "\n"
        )

        def started() -> bool:
            return "started, version" in log_tail(log, 200)

        self.dnsmasq = start_process(
            [IP, "netns", "exec", self.firewall_ns, DNSMASQ, "--no-daemon", "-C", str(conf)],
            log=log,
            ready=started,
            what="dnsmasq",
        )

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the gateway namespace."""
        return [IP, "netns", "exec", self.gateway_ns, *argv]

    def destroy(self) -> None:
        if self.dnsmasq is not None:
            stop_process(self.dnsmasq)
        for ns in reversed(self.created_netns):
            with contextlib.suppress(RuntimeError):
                run([IP, "netns", "del", ns])
        for link in self.created_links:
            with contextlib.suppress(RuntimeError):
                if link in run([IP, "-o", "link", "show"]):
                    run([IP, "link", "del", link])
        etc = NETNS_ETC / self.gateway_ns
        shutil.rmtree(etc, ignore_errors=True)
        with contextlib.suppress(OSError):
            NETNS_ETC.rmdir()  # only if empty, i.e. we created it
        shutil.rmtree(self.directory, ignore_errors=True)


@contextmanager
def site() -> Iterator[Site]:
    """Build a firewalled site; tear it down afterwards, whatever happens."""
    reason = available()
    if reason is not None:
        raise RuntimeError(reason)
    tag = f"{os.getpid() % 10000}{next(_SERIAL)}"
    s = Site(
        tag=tag, subnet=_free_subnet(), directory=Path(tempfile.mkdtemp(prefix="tether-site-"))
    )
    try:
        s.build()
        yield s
    finally:
        s.destroy()
