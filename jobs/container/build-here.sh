#!/usr/bin/env bash
# Build the batchclf image with podman, also on a machine that reaches no image registry.
#
#   jobs/container/build-here.sh [TAG...]   # default: localhost/batchclf:VERSION and localhost/batchclf:latest
#
# The base is $BASE (default python:3.12-slim). When it is neither present nor pullable, a Debian
# base with Python is made from Debian's packages with debootstrap (root, about 2 minutes) and
# imported as localhost/debian-python:bookworm, once. pip inside the build uses the host's network
# and, when SSL_CERT_FILE is set, the host's certificate bundle (a TLS proxy with its own CA).
# Needs podman; uses runc when it is installed (crun cannot start containers where setting
# rlimits is refused) and the settings in containers.conf beside this script.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
export CONTAINERS_CONF=${CONTAINERS_CONF:-$here/containers.conf}

podman=(podman)
if command -v runc >/dev/null || [[ -x /usr/sbin/runc ]]; then
    podman+=(--runtime runc)
fi

version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$repo/batchclf/__init__.py")
tags=("$@")
[[ ${#tags[@]} -gt 0 ]] || tags=("localhost/batchclf:$version" localhost/batchclf:latest)
base=${BASE:-python:3.12-slim}
debian_base=localhost/debian-python:bookworm

if ! "${podman[@]}" image exists "$base" && ! "${podman[@]}" pull "$base"; then
    echo "build-here: $base cannot be pulled; using $debian_base" >&2
    if ! "${podman[@]}" image exists "$debian_base"; then
        command -v debootstrap >/dev/null || PATH=$PATH:/usr/sbin
        command -v debootstrap >/dev/null || {
            echo "build-here: debootstrap is missing (apt-get install debootstrap)" >&2
            exit 1
        }
        rootfs=$(mktemp -d)
        trap 'rm -rf "$rootfs"' EXIT
        debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs"
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
        tar -C "$rootfs" -c . | "${podman[@]}" import - "$debian_base"
    fi
    base=$debian_base
fi

build=(build --network host --build-arg "BASE=$base" -f "$repo/Containerfile")
for tag in "${tags[@]}"; do build+=(-t "$tag"); done
if [[ -n "${SSL_CERT_FILE:-}" && -f "$SSL_CERT_FILE" ]]; then
    build+=(-v "$SSL_CERT_FILE:/etc/ssl/certs/ca-certificates.crt:ro")
fi
"${podman[@]}" "${build[@]}" "$repo"
echo "build-here: built ${tags[*]} ($("${podman[@]}" image inspect --format '{{.Size}}' "${tags[0]}") bytes)"
