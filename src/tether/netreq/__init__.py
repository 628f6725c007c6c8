"""tether.netreq."""
