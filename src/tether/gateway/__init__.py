"""tether.gateway."""
