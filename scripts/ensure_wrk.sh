#!/usr/bin/env bash
# Make sure wrk (the C HTTP benchmarking client `servingbench crosscheck` compares the harness's own client with) is
# installed; print its path.
#
# Idempotent: when a wrk binary is already on PATH (or $WRK points at one) nothing is installed.
# Otherwise installs Debian's `wrk` package with apt-get (as root, or through sudo when available), running
# `apt-get update` first when the package is unknown to apt or the install fails on stale lists.
# Exits non-zero with a clear message when wrk cannot be installed.
set -euo pipefail

find_wrk() {
    if [[ -n "${WRK:-}" && -x "${WRK}" ]]; then
        echo "${WRK}"
        return 0
    fi
    if command -v wrk >/dev/null 2>&1; then
        command -v wrk
        return 0
    fi
    return 1
}

if path=$(find_wrk); then
    echo "$path"
    exit 0
fi

# shellcheck source=apt_ensure.sh
source "$(dirname "$0")/apt_ensure.sh"
apt_ensure ensure_wrk "install wrk (https://github.com/wg/wrk) and put it on PATH (or set WRK=/path/to/wrk)" wrk

if path=$(find_wrk); then
    echo "$path"
    exit 0
fi
echo "ensure_wrk: $APT_ENSURED was installed but no wrk binary is on PATH" >&2
exit 1
