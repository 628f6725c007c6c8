"""tether.netcheck."""
