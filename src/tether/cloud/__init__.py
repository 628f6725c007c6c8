"""tether.cloud."""
