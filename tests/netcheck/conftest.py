"""Fixtures for the preflight tests: the hostile-network test bed."""

from __future__ import annotations

from tests.support.testbed.fixtures import (  # noqa: F401 (fixtures)
    app_factory,
    ca_file,
    dns_factory,
    mitm_factory,
    nginx_factory,
    ntp_factory,
    squid_factory,
    test_ca,
)
