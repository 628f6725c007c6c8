"""tether.protocol."""
