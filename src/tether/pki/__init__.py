"""tether.pki."""
