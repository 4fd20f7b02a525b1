#!/usr/bin/env bash
# The Debian packages the test suite needs beyond Python: PostgreSQL server binaries (the
# team-backend and engine tests start their own server) and headless Chromium (the HTML
# report test). Installed with apt-get when missing and running as root; otherwise it says
# what to install and the tests that need them fail with that message.
set -euo pipefail

missing=()
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
command -v chromium >/dev/null || command -v chromium-browser >/dev/null || missing+=(chromium)
((${#missing[@]})) || exit 0

if [[ $(id -u) -ne 0 ]]; then
    echo "make test needs the Debian packages: ${missing[*]} (install them with: sudo apt-get install ${missing[*]})" >&2
    exit 0
fi
echo "Installing Debian packages: ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
