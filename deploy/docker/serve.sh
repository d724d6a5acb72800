#!/bin/sh
# Entry point of the serve images (docker compose; KubeRay starts Ray itself and ignores this).
# Starts a Ray head in this container, then Ray Serve with every backend of $FMPROG_CONFIG; blocks.
# Ray exports its metrics (Serve replicas, autoscaling) on :8080; its dashboard, which can run
# jobs, listens on the container's loopback only. FMPROG_BACKENDS (comma-separated names) serves
# a subset; FMPROG_RAY_START_ARGS adds `ray start` flags (a flag given again there wins);
# FMPROG_SERVE_HOST and FMPROG_SERVE_PORT move Serve's HTTP proxy (default 0.0.0.0:8000).
set -eu
# shellcheck disable=SC2086  # FMPROG_RAY_START_ARGS holds several flags on purpose
ray start --head --port=6379 --dashboard-host=127.0.0.1 --metrics-export-port=8080 \
    --disable-usage-stats ${FMPROG_RAY_START_ARGS:-}
exec fmprog serve --config "${FMPROG_CONFIG}" \
    --host "${FMPROG_SERVE_HOST:-0.0.0.0}" --port "${FMPROG_SERVE_PORT:-8000}" --ray-address auto \
    ${FMPROG_BACKENDS:+--backends "$FMPROG_BACKENDS"}
