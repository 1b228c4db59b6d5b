#!/usr/bin/env bash
# Installs what is missing, then runs formatting, lint and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure-deps.sh
ensure_numpy
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace
