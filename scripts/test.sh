#!/usr/bin/env bash
# Runs every check a change must pass: formatting, lints, and all tests.
# On a fresh Debian 12 machine, as root, it first installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

echo "== cargo fmt"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== fuzz targets compile"
cargo check --manifest-path fuzz/Cargo.toml --locked --quiet
echo "== cargo test"
cargo test --workspace --locked
