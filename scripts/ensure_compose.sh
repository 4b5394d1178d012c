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

# shellcheck source=apt_ensure.sh
source "$(dirname "$0")/apt_ensure.sh"
apt_ensure ensure_compose "install the Docker Compose plugin (https://docs.docker.com/compose/install/)" \
    "${PACKAGES[@]}"

if found=$(find_compose); then
    echo "$found"
    exit 0
fi
echo "ensure_compose: $APT_ENSURED was installed but neither \`docker compose version\` nor \`docker-compose version\`" \
     "works (is docker-compose on PATH?)" >&2
exit 1
