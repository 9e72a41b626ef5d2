#!/usr/bin/env bash
# The demo (README, quick start): on a fresh Debian 12 machine, as root —
# installs what it needs, builds, starts ykhsmd on the embedded default
# (soft keys.json, SQLite) in a temporary directory, enrolls a software
# YubiKey for alice and logs in through real PAM (pamtester under
# pam_wrapper; /etc/pam.d is not touched). Then a replayed OTP, another
# user's key and a stopped daemon, each refused; and a login with no network
# at all (the daemon and the login inside a network namespace with no
# interface but a loopback: `unshare --net`). Cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "demo: run as root (ykhsmd refuses key and user files not owned by root)" >&2
    exit 1
fi
scripts/install-deps.sh
echo "== building (release)"
cargo build --release --locked --quiet -p ykhsmd -p pam_ykhsm --lib --bins
cargo build --release --locked --quiet -p ykhsm-tests --example demo
exec target/release/examples/demo target/release/ykhsmd target/release/libpam_ykhsm.so
