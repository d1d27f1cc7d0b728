#!/usr/bin/env bash
# One command: install the load tools and baselines, build wakeway in release, measure, write
# benches/results/latest.{json,md} and docs/bench-latency.svg.
#   benches/run.sh            full run (10 s per load point, 100,000 sessions, 10,000 WebSockets)
#   benches/run.sh --quick    3 s per point, smaller counts, release build (~3 min after the build)
#   benches/run.sh --smoke    CI: the debug build `cargo test` made, 1 s per point, small counts; fails only if a
#                             step breaks or miscounts (starts per herd, errors), never on a speed
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
cd "$root"

need_apt=()
command -v wrk >/dev/null || need_apt+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
command -v cmake >/dev/null || need_apt+=(cmake)
command -v h2load >/dev/null || need_apt+=(nghttp2-client)
command -v caddy >/dev/null || need_apt+=(caddy)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need_apt+=(haproxy)
command -v openssl >/dev/null || need_apt+=(openssl)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== apt-get install ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# The Debian packages may start a system nginx (:80), Caddy (:80) and HAProxy; the benches use their own instances only.
if [ ! -x "$here/node_modules/.bin/configurable-http-proxy" ]; then
  echo "== npm install configurable-http-proxy (into benches/node_modules)"
  npm install --silent --no-save --no-package-lock --prefix "$here" configurable-http-proxy@4 >/dev/null
fi

bins=(-p wakeway -p wakeway-benches --bin wakeway --bin wakeway-testspace --bin wakeway-bench-activity
      --bin wakeway-bench-seed)
case " $* " in
  *" --smoke "*) echo "== cargo build (debug: smoke mode)"; cargo build --locked "${bins[@]}" ;;
  *) echo "== cargo build --release"; cargo build --release --locked "${bins[@]}" ;;
esac

# 1,000 concurrent clients (thundering herd) and their proxied connections need descriptors.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
exec python3 "$here/bench.py" "$@"
