#!/usr/bin/env bash
# Installs the Debian 12 packages the tests and the demo need. Idempotent; as
# root it runs apt-get, otherwise it says what is missing and fails.
set -euo pipefail

# One package per line, with the reason it is here.
packages=(
    ca-certificates   # cargo fetching crates over https
    gcc               # cc builds of the bundled C parts of some crates
    libpam0g-dev      # libpam.so, which pam_ykhsm.so links against
    libpam-wrapper    # PAM stacks from a temporary directory (tests/system/pam.rs)
    libnss-wrapper    # the daemon's NSS in tests: sssd-like user-name aliases (tests/common/nss_alias.c)
    pamtester         # a real PAM application for the module's tests
    openssh-server    # the end-to-end login test (tests/system/sshd.rs)
    openssh-client
    dpkg-dev          # packaging/build-deb: dpkg-shlibdeps (the .deb's Depends), dpkg-parsechangelog
    man-db            # groff and man: shipped pages render without warnings (tests/system/man.rs, build-deb, the package test)
    lintian           # scripts/test.sh: lintian on the .deb must show no error
    systemd           # systemd-analyze: verify and the offline security score of ykhsmd.service (no systemd running needed)
    bash-completion   # the package test: `ykadmin <TAB>` completes with the installed completion
    libpam-runtime    # pam-auth-update: the package's maintainer scripts and its test run it
    openssl           # the fleet store's TLS tests: a CA and a server certificate made for each test (ykhsm-testkit/src/postgres.rs)
    postgresql-15     # the fleet store's tests (ykhsm-fleet/tests, tests/system/fleet_admin.rs): a server of their own, started by ykhsm-testkit
    python3           # tests/system/protocol_client.py: a client written from docs/protocol.md alone (tests/system/protocol.rs)
    iproute2          # ip netns + veth: the fleet store behind a link the test cuts (tests/system/fleet.rs)
)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing Debian packages: ${missing[*]} (run as root, or apt-get install them)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
