#!/usr/bin/env bash
# Install what the browser tests (tests/e2e/browser.rs, tests/e2e/oidc.rs, tests/browser/*.mjs) need, idempotently:
#   - Chromium from Debian (/usr/bin/chromium) and Node/npm (system Node 20 runs playwright-core);
#   - playwright-core, oidc-provider and jose (the test OpenID provider), pinned by
#     tests/browser/package-lock.json (`npm ci`). No browser is downloaded:
#     playwright drives the Debian Chromium (never run `npx playwright install`);
#   - code-server with its private Node 24 (scripts/install-code-server.sh), which wakeway finds in
#     ~/.local/share/wakeway/tools when WAKEWAY_WORKSPACE_COMMAND is empty.
# Runs as root or with sudo. apt-get update runs only when a package is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BROWSER_DIR="$ROOT/tests/browser"
start=$(date +%s)

log() { printf '[install-browser-test-deps] %s\n' "$*"; }
die() { printf '[install-browser-test-deps] ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- apt: chromium, node, npm
if [ "$(id -u)" -eq 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1; then
  SUDO=(sudo)
else
  SUDO=(false)
fi
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

missing=()
installed chromium && [ -x /usr/bin/chromium ] || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
[ -x /usr/bin/certutil ] || missing+=(libnss3-tools)  # trusts a test CA in Chromium's NSS database
if [ "${#missing[@]}" -gt 0 ]; then
  [ "${SUDO[0]:-}" != false ] || die "not root and no sudo: as root run: apt-get update && apt-get install -y ${missing[*]}"
  log "installing with apt: ${missing[*]}"
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "apt packages present: chromium, node, npm"
fi
[ -x /usr/bin/chromium ] || die "/usr/bin/chromium missing after apt-get install chromium"
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 20 ] || die "playwright-core needs Node >= 20; $(command -v node) is $(node --version)"

# ---------------------------------------------------------------- playwright-core (pinned, no browser download)
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm_config_audit=false npm_config_fund=false npm_config_update_notifier=false
# Each pinned package (playwright-core; oidc-provider and jose for tests/e2e/oidc.rs) as the lock wants it.
stale=()
for pkg in playwright-core oidc-provider jose; do
  want=$(node -p 'require(process.argv[1]).packages["node_modules/" + process.argv[2]].version' "$BROWSER_DIR/package-lock.json" "$pkg")
  have=$(node -p 'try { require(process.argv[1]).version } catch { "" }' "$BROWSER_DIR/node_modules/$pkg/package.json" 2>/dev/null || true)
  [ "$have" = "$want" ] || stale+=("$pkg $want")
done
if [ "${#stale[@]}" -eq 0 ]; then
  log "playwright-core, oidc-provider, jose present in tests/browser/node_modules"
else
  log "installing in tests/browser (npm ci): ${stale[*]}"
  (cd "$BROWSER_DIR" && npm ci --no-audit --no-fund --loglevel=error)
fi
want=$(node -p 'require(process.argv[1]).packages["node_modules/playwright-core"].version' "$BROWSER_DIR/package-lock.json")
(cd "$BROWSER_DIR" && node -e 'import("playwright-core").then(() => {}, (e) => { console.error(e.message); process.exit(1) })') ||
  die "playwright-core does not load from tests/browser"
(cd "$BROWSER_DIR" && node -e 'import("oidc-provider").then(() => {}, (e) => { console.error(e.message); process.exit(1) })') ||
  die "oidc-provider does not load from tests/browser"

# ---------------------------------------------------------------- code-server
"$ROOT/scripts/install-code-server.sh"

log "ready in $(($(date +%s) - start)) s: $(/usr/bin/chromium --version 2>/dev/null), node $(node --version), playwright-core $want"
