#!/usr/bin/env bash
# Make sure a Docker Compose client is installed (for the compose tests in tests/unit/test_containers.py and for
# docker/up.sh); print the command that runs it ("docker compose" or the path of docker-compose).
#
# Idempotent: when `docker compose version` (the v2 plugin) or `docker-compose version` works, nothing is installed.
# Otherwise installs one with apt-get (as root, or through sudo when available), the first package apt has a
# candidate for: docker-compose-plugin (Docker's apt repository: the v2 plugin), docker-compose-v2 (Ubuntu's v2),
# docker-compose (Debian's; 1.29.2 on bookworm, the only one in Debian 12). `apt-get update` runs first when apt knows
# none of them yet, or when the install fails on stale lists. --no-install-recommends: Debian's docker-compose
# recommends docker.io, a second docker client and an engine that this script must not bring in.
# `config` (what the tests and `up.sh --dry-run` run) needs no engine. Exits non-zero with a clear message when no
# client can be installed.
set -euo pipefail

PACKAGES=(docker-compose-plugin docker-compose-v2 docker-compose)

find_compose() {
    if command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
        echo "docker compose"
        return 0
    fi
    if command -v docker-compose >/dev/null 2>&1 && docker-compose version >/dev/null 2>&1; then
        command -v docker-compose
        return 0
    fi
    return 1
}

if found=$(find_compose); then
    echo "$found"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_compose: no docker compose client (neither \`docker compose\` nor docker-compose works) and" \
         "apt-get is not available; install the Docker Compose plugin (https://docs.docker.com/compose/install/)" >&2
    exit 1
fi

SUDO=()
if [[ "$(id -u)" != "0" ]]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        echo "ensure_compose: no docker compose client and installing one needs root (no passwordless sudo);" \
             "run: apt-get install -y --no-install-recommends docker-compose" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
candidate() {  # the first package of PACKAGES that apt can install
    local p
    for p in "${PACKAGES[@]}"; do
        # grep without -q reads to the end: under pipefail an early exit would SIGPIPE apt-cache and fail the test
        if apt-cache policy "$p" 2>/dev/null | grep 'Candidate: [0-9]' >/dev/null; then
            echo "$p"
            return 0
        fi
    done
    return 1
}
update() {
    "${SUDO[@]}" apt-get update -q >&2 || { echo "ensure_compose: apt-get update failed" >&2; exit 1; }
}

if ! pkg=$(candidate); then
    echo "ensure_compose: apt-get update (no candidate for ${PACKAGES[*]} yet)" >&2
    update
    pkg=$(candidate) || { echo "ensure_compose: apt has none of ${PACKAGES[*]}; install the Docker Compose" \
                               "plugin by hand (https://docs.docker.com/compose/install/)" >&2; exit 1; }
fi

install() {
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends "$pkg" >&2
}
if ! install; then
    echo "ensure_compose: installing $pkg failed; retrying after apt-get update (stale package lists?)" >&2
    update
    install || { echo "ensure_compose: apt-get install $pkg failed" >&2; exit 1; }
fi

if found=$(find_compose); then
    echo "$found"
    exit 0
fi
echo "ensure_compose: $pkg was installed but neither \`docker compose version\` nor \`docker-compose version\`" \
     "works (is docker-compose on PATH?)" >&2
exit 1
