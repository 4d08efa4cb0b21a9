#!/usr/bin/env bash
# Installs the Debian packages the test suite needs. Idempotent: a package that
# is already installed is skipped, and `apt-get update` runs only when something
# is missing. Runs unattended (no stdin, CI=true); needs root or sudo for apt.
#
# To add a tool, add one line to PACKAGES: "<package> <command it provides>".
set -euo pipefail

PACKAGES=(
    "prometheus promtool"   # the Prometheus server and promtool (config/rule checks, e2e tests)
    "docker-compose docker-compose"   # Compose file validation (`docker-compose config`); no Docker engine needed
)

missing=()
for entry in "${PACKAGES[@]}"; do
    read -r pkg cmd <<<"$entry"
    if ! command -v "$cmd" >/dev/null 2>&1 && ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed"; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "test tools: all present"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo -n"
fi

export DEBIAN_FRONTEND=noninteractive
echo "test tools: installing ${missing[*]}"
$SUDO apt-get update -qq
# --no-install-recommends keeps the install small; the server is never started as a service here.
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
