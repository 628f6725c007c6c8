"""The manifests shipped with tether: reference descriptions of other vendors' gateways.

They are examples of describing any gateway with the manifest format, built from the facts the
vendors publish, and the inputs of the golden-file tests for every renderer.
"""

from __future__ import annotations

from importlib import resources

from tether.netreq.loader import parse_manifest
from tether.netreq.model import Manifest

__all__ = ["REFERENCE_MANIFESTS", "load_reference", "reference_text"]

REFERENCE_MANIFESTS = (
    "dt-cloud-connector-2nd-gen",
    "dt-cloud-connector-legacy",
    "mapped-gateway",
)


def reference_text(name: str) -> bytes:
    """The TOML source of a shipped reference manifest."""
    if name not in REFERENCE_MANIFESTS:
        raise KeyError(f"no reference manifest {name!r} (one of {', '.join(REFERENCE_MANIFESTS)})")
    return resources.files("tether.netreq").joinpath(f"reference/{name}.toml").read_bytes()


def load_reference(name: str) -> Manifest:
    """A shipped reference manifest, parsed and validated."""
    source = f"tether/netreq/reference/{name}.toml"
    return parse_manifest(reference_text(name), source=source, fmt="toml")
