#!/usr/bin/env bash
# Install the Debian packages tether's tests use as real peers, only those that are missing.
set -euo pipefail
packages=(postgresql squid nginx-light mosquitto nftables iproute2 dnsmasq-base chromium procps openssl)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "sysdeps: missing Debian packages: ${missing[*]} (run as root, or install them)" >&2
  exit 1
fi
echo "sysdeps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The packages' own services are not wanted: tests start their own instances.
for svc in postgresql squid nginx mosquitto; do
  (command -v service >/dev/null && service "$svc" stop >/dev/null 2>&1) || true
done
