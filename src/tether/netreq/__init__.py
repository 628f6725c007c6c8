"""The network-requirements manifest and everything generated from it (no I/O except loading).

- :mod:`tether.netreq.model`: the manifest types (endpoints, TLS expectations, probe hints, DNS
  and time policy, change log) and their semantic checks;
- :mod:`tether.netreq.loader`: TOML/JSON loading with errors naming file, entry and field;
- :mod:`tether.netreq.own`: tether's own manifest from the cloud's deployment settings;
- :mod:`tether.netreq.serve`: bodies of the cloud's unauthenticated manifest endpoints;
- :mod:`tether.netreq.catalog`: the shipped reference manifests of other vendors' gateways;
- :mod:`tether.netreq.render`: the human document and the firewall formats;
- :mod:`tether.netreq.diff`: what a site must change between two manifests.
"""
