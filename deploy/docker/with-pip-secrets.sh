#!/bin/sh
# Runs a command (pip) with the build secrets that tell pip how to reach the package index, where
# the builder passed them: the CA bundle (id=pip_cert) and the index URL (id=pip_index_url).
# Without them pip uses its defaults. The secrets exist only during the RUN that mounts them.
set -eu
if [ -s /run/secrets/pip_cert ]; then
    export PIP_CERT=/run/secrets/pip_cert REQUESTS_CA_BUNDLE=/run/secrets/pip_cert
fi
if [ -s /run/secrets/pip_index_url ]; then
    PIP_INDEX_URL="$(cat /run/secrets/pip_index_url)"
    export PIP_INDEX_URL
fi
exec "$@"
