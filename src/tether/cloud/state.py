"""Everything one cloud process holds while it runs, built and torn down by the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from tether.cloud.batching import BatchLoader
from tether.cloud.health import ApiStats, HealthService
from tether.cloud.identity import GatewayIdentity, gateway_identity
from tether.cloud.ingest import IngestPipeline
from tether.cloud.link import LinkHub
from tether.cloud.service import GatewayService
from tether.cloud.settings import CloudSettings
from tether.cloud.store import Store
from tether.cloud.store.links import LinkStore
from tether.cloud.store.records import CertificateRecord
from tether.cloud.store.telemetry import TelemetryStore
from tether.pki.ca import CertificateAuthority

__all__ = ["STATE_KEY", "CloudState"]


@dataclass(slots=True)
class CloudState:
    settings: CloudSettings
    store: Store
    ca: CertificateAuthority
    hub: LinkHub
    service: GatewayService
    telemetry: TelemetryStore
    ingest: IngestPipeline
    links: LinkStore
    health: HealthService
    certificates: BatchLoader[str, CertificateRecord] = field(init=False)
    #: The operator API's requests, for /metrics.
    api_stats: ApiStats = field(default_factory=ApiStats)

    def __post_init__(self) -> None:
        # Certificate checks of links opening together are answered by one query.
        self.certificates = BatchLoader(self.store.get_certificates)

    async def gateway_identity(self, request: web.Request) -> GatewayIdentity:
        return await gateway_identity(
            request,
            store=self.store,
            ca=self.ca,
            trusted_proxies=self.settings.trusted_proxies,
            header=self.settings.client_cert_header,
            certificates=self.certificates,
        )


#: Where the running cloud keeps its :class:`CloudState` in the aiohttp application.
STATE_KEY = web.AppKey("state", CloudState)
