#!/usr/bin/env bash
# The demo: start ykhsmd on the embedded default (soft keys, SQLite) in a
# temporary directory and log in through real PAM. It needs the daemon and
# the PAM module, which are not built yet.
set -euo pipefail
echo "demo: coming with the PAM module (ykhsmd and pam_ykhsm.so are not built yet)." >&2
echo "demo: meanwhile, scripts/test.sh runs the verification core's tests." >&2
exit 2
