# Sourced by the ensure_*.sh scripts: install the first of some Debian packages that apt has a candidate for.
#
#   apt_ensure WHO HINT PACKAGE...
#
# As root, or through passwordless sudo; runs `apt-get update` first when apt knows none of the packages yet (a
# fresh image with empty lists) and retries once after an update when the install fails (stale lists).
# --no-install-recommends keeps the install to what was asked for. On failure: a message naming WHO and HINT (what
# to do by hand) on stderr, and exit 1. Sets APT_ENSURED to the package installed.

apt_ensure() {
    local who=$1 hint=$2
    shift 2
    local packages=("$@")
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "$who: apt-get is not available; $hint" >&2
        exit 1
    fi
    local sudo=()
    if [[ "$(id -u)" != "0" ]]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo=(sudo -n)
        else
            echo "$who: installing needs root (no passwordless sudo); $hint" >&2
            exit 1
        fi
    fi
    export DEBIAN_FRONTEND=noninteractive
    _apt_candidate() {
        local p
        for p in "${packages[@]}"; do
            # grep without -q reads to the end: under pipefail an early exit would SIGPIPE apt-cache
            if apt-cache policy "$p" 2>/dev/null | grep 'Candidate: [0-9]' >/dev/null; then
                echo "$p"
                return 0
            fi
        done
        return 1
    }
    _apt_update() {
        "${sudo[@]}" apt-get update -q >&2 || { echo "$who: apt-get update failed" >&2; exit 1; }
    }
    local pkg
    if ! pkg=$(_apt_candidate); then
        echo "$who: apt-get update (no candidate for ${packages[*]} yet)" >&2
        _apt_update
        pkg=$(_apt_candidate) || { echo "$who: apt has none of ${packages[*]}; $hint" >&2; exit 1; }
    fi
    if ! "${sudo[@]}" apt-get install -y -q --no-install-recommends "$pkg" >&2; then
        echo "$who: installing $pkg failed; retrying after apt-get update (stale package lists?)" >&2
        _apt_update
        "${sudo[@]}" apt-get install -y -q --no-install-recommends "$pkg" >&2 \
            || { echo "$who: apt-get install $pkg failed; $hint" >&2; exit 1; }
    fi
    APT_ENSURED=$pkg
}
