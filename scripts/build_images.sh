#!/usr/bin/env bash
# Builds fmprog's CPU images on this machine from a local Debian base (`make images`):
#   1. the base: a Debian bookworm minbase from debootstrap, imported as $FMPROG_BASE_IMAGE
#      (reused when that tag exists; no public image registry is needed);
#   2. router, policy and serve from deploy/docker/Dockerfile with that base as PYTHON_IMAGE;
#   3. postgres and prometheus (Debian's packages) for the compose smoke run;
# then prints the images' sizes. Needs root, a running dockerd (Debian's docker.io) and debootstrap.
#
# pip inside the build reaches the package index over the host's network; the host's CA bundle and
# index URL go in as build secrets (never into a layer). The local base has no Python; the
# Dockerfile's `python` stage installs Debian's python3 into a virtual environment at /usr/local.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BASE_IMAGE="${FMPROG_BASE_IMAGE:-fmprog/base:bookworm}"
DEBIAN_MIRROR="${FMPROG_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
TAG="${FMPROG_IMAGE_TAG:-0.1.0}"
# torch's CPU wheel: the Dockerfile takes it from download.pytorch.org, which this machine cannot
# reach; pip's find-links directory here holds the same file.
LOCAL_WHEELS="${FMPROG_LOCAL_WHEELS:-${PIP_FIND_LINKS:-/opt/wheels}}"

die() { echo "build_images: $*" >&2; exit 1; }

# -- the tools ------------------------------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap and docker need it)"
# A docker CLI that builds with BuildKit (RUN --mount, --secret): `docker buildx`, or Debian's
# docker.io CLI (20.10), whose built-in BuildKit needs no plugin. A newer CLI without buildx
# refuses DOCKER_BUILDKIT=1.
if docker buildx version >/dev/null 2>&1; then
    DOCKER=(docker); BUILD=(docker buildx build --load)
elif [ -x /usr/bin/docker ]; then
    DOCKER=(/usr/bin/docker); BUILD=(env DOCKER_BUILDKIT=1 /usr/bin/docker build)
else
    die "no docker CLI that can build with BuildKit; apt-get install docker.io"
fi
"${DOCKER[@]}" info >/dev/null 2>&1 || die "dockerd is not running; start it with:
    nohup dockerd --bridge=none --iptables=false --ip6tables=false > /var/log/dockerd.log 2>&1 &"

# -- 1. the local base ------------------------------------------------------------------------------
if "${DOCKER[@]}" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    echo "== base: $BASE_IMAGE exists, reused"
else
    command -v debootstrap >/dev/null || die "debootstrap is missing; apt-get install debootstrap"
    echo "== base: debootstrap --variant=minbase bookworm -> $BASE_IMAGE"
    rootfs="$(mktemp -d /tmp/fmprog-base.XXXXXX)"
    trap 'rm -rf "$rootfs"' EXIT
    debootstrap --variant=minbase bookworm "$rootfs" "$DEBIAN_MIRROR" > "$rootfs.log" 2>&1 \
        || die "debootstrap failed; see $rootfs.log"
    rm -f "$rootfs.log"
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
    tar -C "$rootfs" -c . | "${DOCKER[@]}" import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["bash"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
    trap - EXIT
fi

# -- 2. router, policy, serve -------------------------------------------------------------------------
# The host's CA bundle (pip's, else the system's) and index URL, as build secrets.
ca_bundle="${PIP_CERT:-${REQUESTS_CA_BUNDLE:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}}"
[ -r "$ca_bundle" ] || die "no CA bundle at $ca_bundle (set PIP_CERT)"
secrets=(--secret "id=pip_cert,src=$ca_bundle")
index_url="${PIP_INDEX_URL:-$(pip config get global.index-url 2>/dev/null || true)}"
if [ -n "$index_url" ]; then
    index_file="$(mktemp /tmp/fmprog-index.XXXXXX)"
    trap 'rm -f "$index_file"' EXIT
    printf '%s' "$index_url" > "$index_file"
    secrets+=(--secret "id=pip_index_url,src=$index_file")
fi

# The build context's local-wheels folder (deploy/docker/wheels, git-ignored) gets torch's CPU wheel.
torch_version="$(sed -n 's/^torch==//p' "$ROOT/deploy/docker/constraints.txt")"
wheels_dir="$ROOT/deploy/docker/wheels"
mkdir -p "$wheels_dir"
if ! ls "$wheels_dir"/torch-"$torch_version"-*.whl >/dev/null 2>&1; then
    found="$(ls "$LOCAL_WHEELS"/torch-"$torch_version"-cp311-*.whl 2>/dev/null | head -1 || true)"
    [ -n "$found" ] || die "no torch-$torch_version wheel for Python 3.11 in $LOCAL_WHEELS (set FMPROG_LOCAL_WHEELS)"
    cp "$found" "$wheels_dir/"
fi

build() {  # build TARGET IMAGE [DOCKERFILE]
    local target="$1" image="$2" file="${3:-deploy/docker/Dockerfile}"
    echo "== $image (target $target)"
    # The `# syntax=` line would pull the Dockerfile frontend from a registry: BuildKit's built-in
    # frontend reads the same file (RUN --mount, secrets) without it.
    sed '1{/^# syntax=/d}' "$ROOT/$file" | "${BUILD[@]}" \
        --file - --target "$target" --tag "$image" --network host \
        --build-arg "PYTHON_IMAGE=$BASE_IMAGE" --build-arg "BASE_IMAGE=$BASE_IMAGE" \
        --build-arg "TORCH_INDEX_URL=" \
        "${secrets[@]}" --progress plain "$ROOT" > "/tmp/fmprog-build-$target.log" 2>&1 \
        || { tail -40 "/tmp/fmprog-build-$target.log" >&2; die "building $image failed; see /tmp/fmprog-build-$target.log"; }
}

build router "fmprog/router:$TAG"
build policy "fmprog/policy:$TAG"
build serve "fmprog/serve-cpu:$TAG"
build postgres "fmprog/postgres:15-bookworm" deploy/docker/Dockerfile.debian
build prometheus "fmprog/prometheus:bookworm" deploy/docker/Dockerfile.debian

echo "== sizes"
"${DOCKER[@]}" image ls --format 'table {{.Repository}}:{{.Tag}}\t{{.Size}}' \
    | grep -E "^(REPOSITORY|fmprog/)"
