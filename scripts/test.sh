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
echo "== dependency boundary: the PAM module pulls no SQLite, AES, serial or async runtime"
heavy=$(cargo tree -p pam_ykhsm -e normal --prefix none --locked | grep -oE '^(rusqlite|libsqlite3-sys|aes|ccm|serialport|tokio) ' | sort -u || true)
if [ -n "$heavy" ]; then
    echo "pam_ykhsm depends on: $heavy" >&2
    exit 1
fi
echo "== fuzz targets compile"
cargo check --manifest-path fuzz/Cargo.toml --locked --quiet
echo "== cargo test"
cargo test --workspace --locked
echo "== ykhsmd's suites again (daemon, PAM, sshd, ykadmin), on the YubiHSM 1 emulator: same tests, same AEAD files"
YKHSM_TEST_BACKEND=yubihsm cargo test -p ykhsmd --locked --tests
