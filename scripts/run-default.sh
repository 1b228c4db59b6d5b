#!/usr/bin/env bash
# Installs what is missing, builds, and runs the default experiment of `dmft`
# (extra arguments are passed to dmft, e.g. `run CONFIG.toml --out DIR`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure-deps.sh
cargo run --release --quiet -p dmft-cli --bin dmft -- "$@"
