#!/usr/bin/env bash
# Install what building and testing wakeway needs on a fresh Debian 12 machine (idempotent).
#   - cmake: pingora builds zlib-ng with it
#   - python3: the lifecycle API tests run `python3 -m http.server` as a workspace
#   - pebble (+ pebble-challtestsrv): the ACME server the TLS tests issue certificates from
#   - curl: the tests' DNS-01 hook talks to pebble-challtestsrv with it
#   - redis-server: the multi-replica tests start their own on free ports
set -euo pipefail

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v curl >/dev/null 2>&1 || need+=(curl)
[ -x /usr/bin/pebble ] && [ -x /usr/bin/pebble-challtestsrv ] || need+=(pebble)
[ -x /usr/bin/redis-server ] || need+=(redis-server)

if [ ${#need[@]} -gt 0 ]; then
  echo "[install-test-deps] installing: ${need[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${need[@]}" >/dev/null
fi
echo "[install-test-deps] ready: $(cmake --version | head -1), $(python3 --version), pebble $(dpkg-query -W -f='${Version}' pebble), $(redis-server --version | cut -d' ' -f1-3)"
