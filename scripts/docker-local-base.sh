#!/usr/bin/env bash
# A Debian bookworm base image made on this machine, for machines that reach no image registry
# (`FROM python:3.11-slim-bookworm` cannot be pulled there). Needs root, debootstrap and a Docker
# daemon; about 30-60 s. The Dockerfile installs python3.11 from Debian on top of it.
#
#   scripts/docker-local-base.sh [IMAGE]        # default: zeroguide-base:bookworm
#   docker build --network host --build-arg BASE_IMAGE=zeroguide-base:bookworm -t zeroguide-backend .
#
# The host's locally added CA certificates (/usr/local/share/ca-certificates/*.crt) are copied
# into the image before anything installs `ca-certificates`: where outbound HTTPS is re-signed by
# a local CA, pip inside the build trusts it only then. DEBIAN_MIRROR overrides the mirror
# (default: the first Debian mirror in this machine's apt sources). REBUILD_BASE=1 makes it again.
set -euo pipefail

image=${1:-zeroguide-base:bookworm}
if [ -z "${REBUILD_BASE:-}" ] && docker image inspect "$image" >/dev/null 2>&1; then
    echo "base image $image exists (REBUILD_BASE=1 to make it again)"
    exit 0
fi
command -v debootstrap >/dev/null || { echo "debootstrap is missing: apt-get install debootstrap" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "debootstrap needs root" >&2; exit 2; }

mirror=${DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
    # deb822 (.sources) "URIs:" lines and one-line "deb URI suite" entries; skip the security archive
    mirror=$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
        | awk '/^URIs:/ {print $2} /^deb / {print ($2 ~ /^\[/ ? $3 : $2)}' \
        | grep -E '/debian/?$' | head -n 1 || true)
fi
[ -n "$mirror" ] || { echo "no Debian mirror found in the apt sources: set DEBIAN_MIRROR" >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "debootstrap bookworm from $mirror"
debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 20 "$work/debootstrap.log" >&2; exit 1; }
rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
tar -C "$work/rootfs" -c . | docker import - "$image-rootfs" >/dev/null

mkdir -p "$work/context/certs"
cp /usr/local/share/ca-certificates/*.crt "$work/context/certs/" 2>/dev/null || true
{
    echo "FROM $image-rootfs"
    echo "COPY certs/ /usr/local/share/ca-certificates/"
} >"$work/context/Dockerfile"
echo "local CA certificates copied: $(ls "$work/context/certs" | tr '\n' ' ')"
docker build -q -t "$image" -f "$work/context/Dockerfile" "$work/context" >/dev/null
docker image rm "$image-rootfs" >/dev/null  # untags; the layer stays as the base's parent
docker image ls "$image"
