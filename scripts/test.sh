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
echo "== the fleet protocol's model, checked by stateright in release (every property in every state; a broken rule caught)"
cargo test --release -p ykhsm-fleet-model --locked -- --include-ignored
echo "== the whole-system suites again (tests/system: daemon, PAM, sshd, ykadmin, ...), on the YubiHSM 1 emulator: same tests, same AEAD files"
# --workspace: the same packages as above, so nothing is compiled again.
YKHSM_TEST_BACKEND=yubihsm cargo test --workspace --locked --test system

# The Debian package (issue 13): built, linted, its unit scored, then
# installed and used by the whole-system test, after every other suite
# (it installs the package and edits /etc/pam.d, and restores them).
echo "== the Debian package: packaging/build-deb"
# (Not `tee /dev/stderr`: when stderr is a file, reopening it truncates it.)
build_log=$(mktemp)
packaging/build-deb | tee "$build_log"
deb=$(tail -n 1 "$build_log")
rm -f "$build_log"
echo "== lintian $deb (no error and no warning; info tags and overrides shown)"
# As nobody: lintian unpacks the archive, and needs no privilege for it.
runuser -u nobody -- lintian --display-info --show-overrides --fail-on error,warning "$deb"
echo "== systemd-analyze security: packaging/ykhsmd.service, exposure at most 2.0"
security=$(systemd-analyze security --offline=yes --no-pager --threshold=20 packaging/ykhsmd.service) || {
    echo "$security" >&2
    echo "ykhsmd.service: exposure above 2.0" >&2
    exit 1
}
echo "$security" | grep 'Overall exposure level'
echo "== the installed package: tests/package.rs (systemd-analyze verify of the installed unit, logins, remove, reinstall, purge)"
if [ "$(id -u)" -eq 0 ]; then
    cargo test -p ykhsm-tests --test package --locked -- --ignored
else
    echo "skipped: it installs a package and edits /etc/pam.d, so it runs as root only" >&2
fi
