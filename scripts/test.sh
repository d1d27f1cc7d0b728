#!/usr/bin/env bash
# The one test command: install what the tests need, then run every test in the workspace.
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
scripts/install-browser-test-deps.sh
# Four at a time: the browser tests mostly wait (an idle tab for minutes), so they overlap well.
cargo test --workspace --locked "$@" -- --test-threads=4
