"""tether.gateway.connectors."""
