#!/usr/bin/env bash
# Install code-server 4.x (the npm build) plus a private Node 24 under the wakeway tools prefix.
#
# Network used: the Debian apt repositories and the npm registry only (no GitHub releases,
# no nodejs.org, no install scripts piped from curl). Node 24 comes from the npm package
# `node-linux-<arch>`, which also ships the headers node-gyp needs (npm_config_nodedir).
#
# Result:
#   $PREFIX/bin/code-server   wrapper: runs code-server with the private Node 24 (PATH untouched)
#   $PREFIX/bin/node          symlink to the private Node 24
#   $PREFIX/lib/node-v<ver>/ and $PREFIX/lib/code-server-<ver>/   the installs themselves
#
# Idempotent: when the wrapper already reports the wanted version, the script does nothing.
#
# Environment:
#   WAKEWAY_TOOLS              install prefix (default: /opt/wakeway/tools as root, so that every
#                              workspace uid can run it; else $HOME/.local/share/wakeway/tools)
#   CODE_SERVER_VERSION        code-server version, must be 4.x (default below)
#   CODE_SERVER_NODE_VERSION   Node version, must be 24.x (default below)
set -euo pipefail

CODE_SERVER_VERSION="${CODE_SERVER_VERSION:-4.139.1}"
NODE_VERSION="${CODE_SERVER_NODE_VERSION:-24.21.0}"
if [ "$(id -u)" -eq 0 ]; then
  DEFAULT_PREFIX=/opt/wakeway/tools
else
  DEFAULT_PREFIX="$HOME/.local/share/wakeway/tools"
fi
PREFIX="${WAKEWAY_TOOLS:-$DEFAULT_PREFIX}"
# Readable and runnable by every user: isolated workspaces run code-server under their own uids.
umask 022
APT_PACKAGES=(build-essential python3 pkg-config libxkbfile-dev libkrb5-dev libsecret-1-dev)

log() { printf '[install-code-server] %s\n' "$*"; }
die() { printf '[install-code-server] ERROR: %s\n' "$*" >&2; exit 1; }

case "$CODE_SERVER_VERSION" in 4.*) ;; *) die "CODE_SERVER_VERSION must be 4.x (got $CODE_SERVER_VERSION)" ;; esac
case "$NODE_VERSION" in 24.*) ;; *) die "CODE_SERVER_NODE_VERSION must be 24.x (got $NODE_VERSION)" ;; esac

case "$(uname -m)" in
  x86_64 | amd64) NODE_ARCH=x64 ;;
  aarch64 | arm64) NODE_ARCH=arm64 ;;
  *) die "unsupported architecture $(uname -m)" ;;
esac
NODE_PKG="node-linux-$NODE_ARCH"

NODE_DIR="$PREFIX/lib/node-v$NODE_VERSION"
NODE_PKG_DIR="$NODE_DIR/lib/node_modules/$NODE_PKG"
NODE_BIN="$NODE_PKG_DIR/bin/node"
CS_DIR="$PREFIX/lib/code-server-$CODE_SERVER_VERSION"
CS_PKG_DIR="$CS_DIR/lib/node_modules/code-server"
CS_ENTRY="$CS_PKG_DIR/out/node/entry.js"
WRAPPER="$PREFIX/bin/code-server"
STAMP=".wakeway-install-complete"

# `code-server --version` prints "4.139.1 <commit> with Code 1.139.1". On a first run it also
# writes a default config (with a password) and logs under $HOME, so run it in a throwaway home.
version_line() {
  local scratch
  scratch=$(mktemp -d)
  HOME="$scratch" XDG_CONFIG_HOME="$scratch/config" XDG_DATA_HOME="$scratch/data" \
    XDG_CACHE_HOME="$scratch/cache" "$@" --version 2>/dev/null |
    awk '$1 ~ /^[0-9]+\.[0-9]+\.[0-9]+$/ { print; exit }' || true
  rm -rf "$scratch"
}

installed_version() {
  [ -x "$WRAPPER" ] || return 0
  version_line "$WRAPPER" | awk '{ print $1 }'
}

up_to_date() {
  [ -f "$NODE_DIR/$STAMP" ] && [ -f "$CS_DIR/$STAMP" ] &&
    [ "$(readlink "$PREFIX/bin/node" 2>/dev/null || true)" = "$NODE_BIN" ] &&
    [ "$(installed_version)" = "$CODE_SERVER_VERSION" ]
}

report() {
  log "code-server: $WRAPPER"
  log "version:     $(version_line "$WRAPPER")"
  log "node:        $PREFIX/bin/node ($("$PREFIX/bin/node" --version))"
}

# ---------------------------------------------------------------- quick no-op check
if up_to_date; then
  log "already installed at version $CODE_SERVER_VERSION, nothing to do"
  report
  exit 0
fi

start=$(date +%s)
log "installing code-server $CODE_SERVER_VERSION with Node $NODE_VERSION into $PREFIX"
mkdir -p "$PREFIX/bin" "$PREFIX/lib" "$PREFIX/logs"

# One installer at a time (a second run waits, then finds everything done).
exec 9>"$PREFIX/.install-code-server.lock"
if ! flock -n 9; then
  log "another install is running; waiting for it to finish"
  flock 9
  if up_to_date; then
    log "the other install finished it, nothing to do"
    report
    exit 0
  fi
fi

export npm_config_audit=false npm_config_fund=false npm_config_update_notifier=false

# Run a command in the background, log to a file, print a heartbeat; show the log tail on failure.
run_logged() {
  local what="$1" logfile="$2"
  shift 2
  log "$what (log: $logfile)"
  "$@" >"$logfile" 2>&1 &
  local pid=$! t0 rc=0
  t0=$(date +%s)
  trap 'kill "$pid" 2>/dev/null || true' EXIT
  local n=0
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    n=$((n + 1))
    if [ $((n % 30)) -eq 0 ]; then
      log "  ... still running (${n} s): $(tail -n 1 "$logfile" | cut -c1-100)"
    fi
  done
  wait "$pid" || rc=$?
  trap - EXIT
  if [ "$rc" -ne 0 ]; then
    log "FAILED ($what, exit $rc); last lines of $logfile:"
    tail -n 40 "$logfile" >&2
    exit "$rc"
  fi
  log "  done in $(($(date +%s) - t0)) s"
}

stamp_ts=$(date +%Y%m%d-%H%M%S)

# ---------------------------------------------------------------- apt build dependencies
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ "${#missing[@]}" -gt 0 ]; then
  log "apt packages needed: ${missing[*]}"
  if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
  elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
  else
    die "not root and no sudo: as root run: apt-get update && apt-get install -y ${missing[*]}"
  fi
  apt_log="$PREFIX/logs/apt-$stamp_ts"
  run_logged "apt-get update" "$apt_log-update.log" \
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
  run_logged "apt-get install ${missing[*]}" "$apt_log-install.log" \
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
else
  log "apt packages present: ${APT_PACKAGES[*]}"
fi
NPM_CLI="$(readlink -f "$(command -v npm)")"

free_mb=$(df -Pm "$PREFIX" | awk 'NR == 2 { print $4 }')
if [ "${free_mb:-0}" -lt 1500 ]; then
  log "WARNING: only ${free_mb} MB free under $PREFIX; the install needs about 700 MB (+ npm cache)"
fi

# ---------------------------------------------------------------- Node 24 (npm package)
if [ -f "$NODE_DIR/$STAMP" ] && [ "$("$NODE_BIN" --version 2>/dev/null || true)" = "v$NODE_VERSION" ]; then
  log "Node $NODE_VERSION already present at $NODE_BIN"
else
  rm -rf "$NODE_DIR"
  run_logged "installing Node $NODE_VERSION from npm package $NODE_PKG@$NODE_VERSION" \
    "$PREFIX/logs/node-v$NODE_VERSION-$stamp_ts.log" \
    npm install --global --prefix "$NODE_DIR" "$NODE_PKG@$NODE_VERSION"
  [ "$("$NODE_BIN" --version)" = "v$NODE_VERSION" ] || die "$NODE_BIN does not report v$NODE_VERSION"
  [ -f "$NODE_PKG_DIR/include/node/node.h" ] || die "$NODE_PKG has no headers in $NODE_PKG_DIR/include/node"
  touch "$NODE_DIR/$STAMP"
fi

# ---------------------------------------------------------------- code-server (npm, native modules built here)
if [ -f "$CS_DIR/$STAMP" ] && [ -f "$CS_ENTRY" ]; then
  log "code-server $CODE_SERVER_VERSION already present at $CS_PKG_DIR"
else
  rm -rf "$CS_DIR"
  # Node 24 first on PATH: npm itself, the postinstall script and its nested `npm install`
  # (lib/vscode, lib/vscode/extensions) all run on it; node-gyp takes headers from nodedir.
  run_logged "installing code-server $CODE_SERVER_VERSION from npm (builds native modules, ~5-10 min)" \
    "$PREFIX/logs/code-server-$CODE_SERVER_VERSION-$stamp_ts.log" \
    env PATH="$NODE_PKG_DIR/bin:$PATH" npm_config_nodedir="$NODE_PKG_DIR" \
    "$NODE_BIN" "$NPM_CLI" install --global --prefix "$CS_DIR" --foreground-scripts \
    "code-server@$CODE_SERVER_VERSION"
  [ -f "$CS_ENTRY" ] || die "code-server entry point missing: $CS_ENTRY"
  # The in-terminal `code-server` CLI (lib/vscode/bin/remote-cli) falls back to <pkg>/lib/node.
  [ -e "$CS_PKG_DIR/lib/node" ] || ln -s "$NODE_BIN" "$CS_PKG_DIR/lib/node"
  got=$(version_line "$NODE_BIN" "$CS_ENTRY" | awk '{ print $1 }')
  [ "$got" = "$CODE_SERVER_VERSION" ] || die "installed code-server reports '$got', wanted $CODE_SERVER_VERSION"
  touch "$CS_DIR/$STAMP"
fi

# ---------------------------------------------------------------- bin/ entries (atomic replace)
ln -sfn "$NODE_BIN" "$PREFIX/bin/node.tmp.$$"
mv -fT "$PREFIX/bin/node.tmp.$$" "$PREFIX/bin/node"
cat >"$WRAPPER.tmp.$$" <<EOF
#!/bin/sh
# Generated by wakeway scripts/install-code-server.sh: code-server $CODE_SERVER_VERSION on Node $NODE_VERSION.
exec "$NODE_BIN" "$CS_ENTRY" "\$@"
EOF
chmod 755 "$WRAPPER.tmp.$$"
mv -fT "$WRAPPER.tmp.$$" "$WRAPPER"

up_to_date || die "post-install check failed: $WRAPPER does not report $CODE_SERVER_VERSION"

others=$(find "$PREFIX/lib" -mindepth 1 -maxdepth 1 \( -name 'code-server-*' -o -name 'node-v*' \) \
  ! -path "$CS_DIR" ! -path "$NODE_DIR" -printf '%f ' 2>/dev/null || true)
[ -z "$others" ] || log "older installs kept (remove by hand when unused): $others"

log "installed in $(($(date +%s) - start)) s, $(du -scm "$CS_DIR" "$NODE_DIR" | awk 'END { print $1 }') MB on disk"
report
