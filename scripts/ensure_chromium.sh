#!/usr/bin/env bash
# Make sure a headless-capable Chromium is installed (Debian's `chromium` package); print its path.
#
# Idempotent: when a chromium binary is already on PATH (or $CHROMIUM points at one) nothing is installed.
# Otherwise installs it with apt-get (as root, or through sudo when available), running `apt-get update`
# first when the package is unknown to apt or the install fails on stale lists.
# Exits non-zero with a clear message when Chromium cannot be installed.
set -euo pipefail

find_chromium() {
    if [[ -n "${CHROMIUM:-}" && -x "${CHROMIUM}" ]]; then
        echo "${CHROMIUM}"
        return 0
    fi
    local name
    for name in chromium chromium-browser google-chrome-stable google-chrome chrome; do
        if command -v "$name" >/dev/null 2>&1; then
            command -v "$name"
            return 0
        fi
    done
    return 1
}

if path=$(find_chromium); then
    echo "$path"
    exit 0
fi

# shellcheck source=apt_ensure.sh
source "$(dirname "$0")/apt_ensure.sh"
apt_ensure ensure_chromium "install Chromium and put it on PATH (or set CHROMIUM=/path/to/chromium)" chromium

if path=$(find_chromium); then
    echo "$path"
    exit 0
fi
echo "ensure_chromium: chromium was installed but no chromium binary is on PATH" >&2
exit 1
