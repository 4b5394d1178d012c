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

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_chromium: chromium is not installed and apt-get is not available; install Chromium and put it on PATH (or set CHROMIUM=/path/to/chromium)" >&2
    exit 1
fi

SUDO=()
if [[ "$(id -u)" != "0" ]]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        echo "ensure_chromium: chromium is not installed and installing it needs root (no passwordless sudo); run: apt-get install -y chromium" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
install() {
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends chromium >&2
}

# Update the package lists first when apt does not know a candidate for chromium (fresh image, empty lists).
if ! apt-cache policy chromium 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    echo "ensure_chromium: apt-get update (no candidate for chromium yet)" >&2
    "${SUDO[@]}" apt-get update -q >&2 || { echo "ensure_chromium: apt-get update failed" >&2; exit 1; }
fi

if ! install; then
    echo "ensure_chromium: install failed; retrying after apt-get update (stale package lists?)" >&2
    "${SUDO[@]}" apt-get update -q >&2 || { echo "ensure_chromium: apt-get update failed" >&2; exit 1; }
    install || { echo "ensure_chromium: apt-get install chromium failed" >&2; exit 1; }
fi

if path=$(find_chromium); then
    echo "$path"
    exit 0
fi
echo "ensure_chromium: chromium was installed but no chromium binary is on PATH" >&2
exit 1
