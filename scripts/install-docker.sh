#!/usr/bin/env bash
# Debian's Docker engine (docker.io), docker-compose (v1) and debootstrap, then a dockerd in the
# background when no daemon answers (log: /var/log/dockerd.log). Root only; not run by CI.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 2; }
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || missing+=(docker-compose)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
if docker info >/dev/null 2>&1; then
    echo "a Docker daemon answers"
    exit 0
fi
nohup dockerd >>/var/log/dockerd.log 2>&1 &
echo "dockerd started (pid $!, log /var/log/dockerd.log)"
for _ in $(seq 60); do
    docker info >/dev/null 2>&1 && { echo "a Docker daemon answers"; exit 0; }
    sleep 1
done
echo "dockerd did not answer within 60 s: see /var/log/dockerd.log" >&2
exit 1
