"""tether: link building/IoT edge gateways to their cloud through one outbound TLS port."""

from __future__ import annotations

__all__ = ["BUILD_TIME", "__version__"]

__version__ = "0.1.0"

# The software's build time: a floor for the clock before any certificate check (DESIGN.md,
# principle 1). Bumped with each release; a clock earlier than this is certainly wrong.
BUILD_TIME = 1_795_000_000  # 2026-11-18T08:53:20Z
