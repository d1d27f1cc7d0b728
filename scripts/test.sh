#!/usr/bin/env bash
# The one test command: install what the tests need, then run every test in the workspace.
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
cargo test --workspace --locked "$@"
