"""A hostile-network test bed: real peers started and torn down by the tests themselves.

Every peer listens on loopback (127.0.0.0/8) or inside a network namespace the test created, and
every hostname a test uses is mapped to those addresses by the test's own DNS server, so no test
ever contacts a real host.

- ``certs``: a throw-away CA and server certificates (``cryptography``).
- ``proc``: start a process, wait until it listens, stop it by PID.
- ``dnsserver``: a UDP DNS server answering from a table (A, AAAA, NXDOMAIN, silence).
- ``ntpserver``: an SNTP responder and a "blocked" NTP port that never answers.
- ``appserver``: the tether application endpoints (hello, WebSocket, long-poll) over real TLS.
- ``squid``: squid as a forward proxy (CONNECT, basic authentication, denied domains, timeouts).
- ``mitm``: mitmproxy intercepting TLS.
- ``nginx``: nginx as a TLS-terminating reverse proxy that does not pass WebSocket upgrades.
- ``netns``: a firewalled "site" in a network namespace (veth pair + nftables; root only).
"""
