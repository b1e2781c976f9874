#!/usr/bin/env bash
# `make docker-test`: build the backend image, run it and check it, then run the compose stack
# (Label Studio + backend + setup) and find a prediction in Label Studio. Needs a Docker daemon,
# docker-compose (v1) or the `docker compose` plugin, and python3 on the host; about 15 minutes
# from a cold cache on 2 cores, 3-5 minutes when the images' layers are cached.
#
# Variables:
#   BASE_IMAGE          base of both images; unset: python:3.11-slim-bookworm when it can be had,
#                       else a Debian base made here (scripts/docker-local-base.sh, needs root)
#   LABEL_STUDIO_IMAGE  Label Studio image for the compose stack; unset: heartexlabs/label-studio:1.23.2
#                       when it can be had, else one built here (scripts/docker/label-studio.Dockerfile)
#   DOCKER_NO_CACHE=1   build the backend image without the layer cache (a cold build's figures)
#   DOCKER_TEST_KEEP=1  leave the containers and volumes for a look (they are listed)
#
# Every address used is 127.0.0.1 (ports published on loopback only) or a container's own
# loopback. Containers, volumes and temporary folders made here are removed at the end, also
# after a failure; the images are kept as the next run's cache (a replaced image is removed).
set -euo pipefail
cd "$(dirname "$0")/.."

BACKEND_IMAGE=zeroguide-backend:latest # the name docker-compose.yml gives the backend
LOCAL_BASE=zeroguide-base:bookworm
LOCAL_LABEL_STUDIO=zeroguide-label-studio:1.23.2
RECORDED=tests/service/fixtures/label-studio-requests/predict-url-task.json
RUN_ID=zgdt$$
START=$(date +%s)
WORK=$(mktemp -d)
CONTAINERS=()
VOLUMES=()
COMPOSE_PROJECT=""

say() { printf '[docker-test %4ss] %s\n' "$(($(date +%s) - START))" "$*"; }
fail() {
    say "FAIL: $*"
    exit 1
}

if command -v docker-compose >/dev/null 2>&1; then
    COMPOSE=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
else
    COMPOSE=()
fi

cleanup() {
    local status=$?
    if [ "${DOCKER_TEST_KEEP:-}" = 1 ]; then
        say "kept: containers ${CONTAINERS[*]:-} volumes ${VOLUMES[*]:-} compose project ${COMPOSE_PROJECT:-} ($WORK)"
        exit "$status"
    fi
    if [ -n "$COMPOSE_PROJECT" ]; then
        if [ "$status" != 0 ]; then
            "${COMPOSE[@]}" -p "$COMPOSE_PROJECT" logs --no-color --tail 40 >"$WORK/compose.log" 2>&1 || true
            say "last compose log lines:"
            tail -n 60 "$WORK/compose.log" || true
        fi
        "${COMPOSE[@]}" -p "$COMPOSE_PROJECT" down -v --remove-orphans >/dev/null 2>&1 || true
    fi
    for container in "${CONTAINERS[@]}"; do
        if [ "$status" != 0 ]; then
            say "log of $container:"
            docker logs --tail 30 "$container" 2>&1 || true
        fi
        docker rm -f -v "$container" >/dev/null 2>&1 || true
    done
    for volume in "${VOLUMES[@]}"; do docker volume rm "$volume" >/dev/null 2>&1 || true; done
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# GET url -> "STATUS BODY" (never raises; status 000 when nothing answers)
http_get() {
    python3 - "$1" <<'EOF'
import sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=5) as reply:
        print(reply.status, reply.read().decode("utf-8", "replace").strip())
except urllib.error.HTTPError as error:
    print(error.code, error.read().decode("utf-8", "replace").strip())
except Exception as error:
    print("000", f"{type(error).__name__}: {error}")
EOF
}

# wait_health URL SECONDS WANT: until /health answers WANT (ready: 200 with "models": "ready"; 200; 503);
# prints the last reply; fails on a timeout or a model loading error
wait_health() {
    python3 - "$@" <<'EOF'
import json, sys, time, urllib.error, urllib.request
url, limit, want = sys.argv[1], float(sys.argv[2]), sys.argv[3]
deadline, last = time.monotonic() + limit, "nothing answered"
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            status, body = reply.status, reply.read().decode()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read().decode()
    except Exception as error:
        time.sleep(1)
        continue
    last = f"{status} {body.strip()}"
    try:
        models = json.loads(body).get("models", "")
    except ValueError:
        models = ""
    if (status, models) == (200, "ready") if want == "ready" else status == int(want):
        print(last)
        sys.exit(0)
    if status == 200 and str(models).startswith("error"):
        break
    time.sleep(1)
print(f"after {limit:.0f} s: {last}")
sys.exit(1)
EOF
}

health_status() { docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$1"; }

wait_healthy() { # CONTAINER SECONDS: Docker's own HEALTHCHECK verdict
    local deadline=$(($(date +%s) + $2))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        [ "$(health_status "$1")" = healthy ] && return 0
        sleep 2
    done
    return 1
}

image_available() { # IMAGE: present, or pulled (fails at once where no registry answers)
    docker image inspect "$1" >/dev/null 2>&1 && return 0
    timeout 600 docker pull -q "$1" >/dev/null 2>&1
}

# ------------------------------------------------------------------------- prerequisites
command -v docker >/dev/null || fail "no docker client"
docker info >/dev/null 2>&1 || fail "no Docker daemon reachable (docker info failed); see docs/label-studio.md"
[ ${#COMPOSE[@]} -gt 0 ] || fail "neither docker-compose nor the docker compose plugin is installed"
command -v python3 >/dev/null || fail "python3 is needed on the host"
say "docker $(docker version -f '{{.Server.Version}}'), ${COMPOSE[*]} $("${COMPOSE[@]}" version --short 2>/dev/null || true)"

# --------------------------------------------------------------------------- base image
if [ -z "${BASE_IMAGE:-}" ]; then
    if image_available python:3.11-slim-bookworm; then
        BASE_IMAGE=python:3.11-slim-bookworm
    else
        say "python:3.11-slim-bookworm cannot be pulled: making the local Debian base $LOCAL_BASE"
        scripts/docker-local-base.sh "$LOCAL_BASE"
        BASE_IMAGE=$LOCAL_BASE
    fi
fi
say "base image: $BASE_IMAGE"

# ------------------------------------------------------------------------- backend image
old_image=$(docker image inspect -f '{{.Id}}' "$BACKEND_IMAGE" 2>/dev/null || true)
build_args=(--network host --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$BACKEND_IMAGE")
[ "${DOCKER_NO_CACHE:-}" = 1 ] && build_args+=(--no-cache)
say "building $BACKEND_IMAGE (log: test-artifacts/docker-build.log)"
mkdir -p test-artifacts
build_start=$(date +%s)
docker build "${build_args[@]}" . >test-artifacts/docker-build.log 2>&1 || {
    tail -n 30 test-artifacts/docker-build.log
    fail "docker build failed"
}
build_seconds=$(($(date +%s) - build_start))
new_image=$(docker image inspect -f '{{.Id}}' "$BACKEND_IMAGE")
if [ -n "$old_image" ] && [ "$old_image" != "$new_image" ]; then
    docker image rm "$old_image" >/dev/null 2>&1 || true # the replaced build, now untagged
fi
image_bytes=$(docker image inspect -f '{{.Size}}' "$BACKEND_IMAGE")
image_size=$(python3 -c "print(f'{$image_bytes / 1e9:.2f} GB')")
cache_note=$([ "${DOCKER_NO_CACHE:-}" = 1 ] && echo "no layer cache" || echo "layer cache allowed")
say "built in ${build_seconds}s ($cache_note), image size $image_size"

# ------------------------------------------------------------- what is (not) in the image
docker run --rm --network none "$BACKEND_IMAGE" sh -c '
    set -e
    for package in libgl1 libglib2.0-0 libgl1-mesa-dri libllvm15; do
        if dpkg-query -W -f="\${Status}" "$package" 2>/dev/null | grep -q "ok installed"; then
            echo "GUI library $package is installed"; exit 1
        fi
    done
    python -c "
import importlib.util, cv2
extra = [name for name in (\"pytest\", \"playwright\", \"greenlet\") if importlib.util.find_spec(name)]
assert not extra, f\"test packages in the runtime image: {extra}\"
print(\"cv2\", cv2.__version__, \"imports; no pytest/playwright; no libGL/GLib packages\")
"' || fail "image contents"
say "image contents: ok"

# ------------------------------------------------- the backend alone: tiny preset, a volume
VOLUMES+=("$RUN_ID-model-dir")
docker volume create "$RUN_ID-model-dir" >/dev/null
backend=$(docker run -d --name "$RUN_ID-backend" -e MODEL_PRESET=tiny \
    -v "$RUN_ID-model-dir:/data/model_dir" -p 127.0.0.1::9090 "$BACKEND_IMAGE")
CONTAINERS+=("$backend")
port=$(docker port "$backend" 9090/tcp | head -n 1 | sed 's/.*://')
started=$(date +%s)
reply=$(wait_health "http://127.0.0.1:$port/health" 180 ready) || fail "/health: $reply"
say "/health ready in $(($(date +%s) - started))s: $reply"

uid=$(docker exec "$backend" id -u)
[ "$uid" = 10001 ] || fail "the service runs as uid $uid, not 10001"
docker exec "$backend" sh -c 'f=/data/model_dir/.docker-test; echo ok >"$f" && rm "$f"' ||
    fail "the volume at /data/model_dir is not writable by uid $uid"
say "runs as uid $uid; /data/model_dir (volume) writable"

# The recorded request's task is http://127.0.0.1:8081/test1.png: serve a picture there, on the
# container's own loopback, and send the recording unchanged.
docker exec "$backend" python -c '
import os
from PIL import Image, ImageDraw
os.makedirs("/tmp/docker-test", exist_ok=True)
image = Image.new("RGB", (64, 48), (40, 90, 200))
ImageDraw.Draw(image).ellipse((10, 8, 40, 38), fill=(230, 200, 30))
image.save("/tmp/docker-test/test1.png")'
docker exec -d "$backend" python -m http.server 8081 --bind 127.0.0.1 --directory /tmp/docker-test
sleep 2
python3 - "http://127.0.0.1:$port/predict" "$RECORDED" <<'EOF' || fail "/predict on $RECORDED"
import json, sys, urllib.request
url, recording = sys.argv[1], sys.argv[2]
body = json.load(open(recording))["body"]
request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
with urllib.request.urlopen(request, timeout=300) as reply:
    status, answer = reply.status, json.load(reply)
results = answer["results"]
assert status == 200 and len(results) == len(body["tasks"]) == 1, (status, answer)
regions = results[0]["result"]
brushes = [r for r in regions if r["type"] == "brushlabels"]
assert brushes, f"no brush region in {answer}"
print(f"[docker-test] /predict {status}: {len(regions)} results, {len(brushes)} brushes, "
      f"model_version {results[0]['model_version']}")
EOF
wait_healthy "$backend" 120 || fail "Docker's HEALTHCHECK did not report healthy: $(health_status "$backend")"
say "HEALTHCHECK: healthy"

# --------------------------------------- a root-owned bind mount: 503, then fixed by chown
mkdir -p "$WORK/bind"
docker run --rm --user 0 --network none -v "$WORK/bind:/d" "$BACKEND_IMAGE" sh -c 'chown 0:0 /d && chmod 755 /d'
bound=$(docker run -d --name "$RUN_ID-bind" -e MODEL_PRESET=tiny -e MODEL_LOAD_ON_START=false \
    -v "$WORK/bind:/data/model_dir" -p 127.0.0.1::9090 "$BACKEND_IMAGE")
CONTAINERS+=("$bound")
bound_port=$(docker port "$bound" 9090/tcp | head -n 1 | sed 's/.*://')
reply=$(wait_health "http://127.0.0.1:$bound_port/health" 120 503) || fail "root-owned MODEL_DIR: $reply"
case "$reply" in *MODEL_DIR*"uid 10001"*) ;; *) fail "root-owned MODEL_DIR: unexpected reply $reply" ;; esac
docker exec "$bound" python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/health', timeout=4)" \
    >/dev/null 2>&1 && fail "the HEALTHCHECK command passes although /health answers 503"
say "root-owned bind mount: $reply"
docker run --rm --user 0 --network none -v "$WORK/bind:/d" "$BACKEND_IMAGE" chown 10001:10001 /d
docker restart "$bound" >/dev/null
bound_port=$(docker port "$bound" 9090/tcp | head -n 1 | sed 's/.*://')
reply=$(wait_health "http://127.0.0.1:$bound_port/health" 120 200) || fail "after chown 10001:10001: $reply"
say "after chown 10001:10001 DIR and a restart: ${reply:0:60}..."
for container in "$backend" "$bound"; do docker rm -f -v "$container" >/dev/null; done
CONTAINERS=()

# ------------------------------------------------------------ compose with Label Studio
if [ -z "${LABEL_STUDIO_IMAGE:-}" ]; then
    if image_available heartexlabs/label-studio:1.23.2; then
        LABEL_STUDIO_IMAGE=heartexlabs/label-studio:1.23.2
    else
        say "heartexlabs/label-studio:1.23.2 cannot be pulled: building $LOCAL_LABEL_STUDIO on $BASE_IMAGE"
        ls_start=$(date +%s)
        docker build --network host --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$LOCAL_LABEL_STUDIO" \
            -f scripts/docker/label-studio.Dockerfile scripts/docker >test-artifacts/docker-build-label-studio.log 2>&1 || {
            tail -n 30 test-artifacts/docker-build-label-studio.log
            fail "building $LOCAL_LABEL_STUDIO failed"
        }
        say "built $LOCAL_LABEL_STUDIO in $(($(date +%s) - ls_start))s"
        LABEL_STUDIO_IMAGE=$LOCAL_LABEL_STUDIO
    fi
fi
mkdir -p "$WORK/images" "$WORK/weights"
python3 - "$WORK/images" <<'EOF'
import struct, sys, zlib
def png(path, width, height, colour):  # an RGB PNG with the standard library only
    rows = b"".join(b"\0" + bytes(colour) * width for _ in range(height))
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
png(sys.argv[1] + "/blue.png", 96, 64, (40, 90, 200))
EOF
COMPOSE_PROJECT=$RUN_ID
ls_port=$(free_port)
export LABEL_STUDIO_IMAGE MODEL_PRESET=tiny LABEL_STUDIO_PORT="127.0.0.1:$ls_port" \
    LABEL_STUDIO_USERNAME=admin@example.com \
    LABEL_STUDIO_PASSWORD="$(python3 -c 'import secrets; print(secrets.token_urlsafe(16))')" \
    LABEL_STUDIO_API_KEY="$(python3 -c 'import secrets; print(secrets.token_hex(20))')" \
    IMAGES_PATH="$WORK/images" WEIGHTS_PATH="$WORK/weights" PROJECT_TITLE="docker-test $RUN_ID" \
    BASE_IMAGE
say "compose up (project $COMPOSE_PROJECT, Label Studio $LABEL_STUDIO_IMAGE on 127.0.0.1:$ls_port)"
compose_start=$(date +%s)
: >"$WORK/empty.env" # no .env of the checkout: only the variables exported above
timeout 600 "${COMPOSE[@]}" -p "$COMPOSE_PROJECT" --env-file "$WORK/empty.env" up -d --no-build >"$WORK/up.log" 2>&1 || {
    cat "$WORK/up.log"
    fail "compose up"
}
setup=$("${COMPOSE[@]}" -p "$COMPOSE_PROJECT" ps -q setup)
[ -n "$setup" ] || fail "no setup container"
setup_status=$(timeout 420 docker wait "$setup") || fail "setup did not finish within 420 s"
docker logs "$setup" >"$WORK/setup.log" 2>&1
[ "$setup_status" = 0 ] || {
    tail -n 30 "$WORK/setup.log"
    fail "setup exited with $setup_status"
}
say "setup exited 0 after $(($(date +%s) - compose_start))s: $(tail -n 1 "$WORK/setup.log")"

for service in label-studio backend; do
    container=$("${COMPOSE[@]}" -p "$COMPOSE_PROJECT" ps -q "$service")
    [ "$(health_status "$container")" = healthy ] || fail "$service is $(health_status "$container")"
done
[ "$(health_status "$setup")" = none ] || fail "the setup container has a healthcheck: $(health_status "$setup")"
setup_volumes=$(docker inspect -f '{{range .Mounts}}{{if eq .Type "volume"}}{{.Destination}} {{end}}{{end}}' "$setup")
[ -z "$setup_volumes" ] || fail "the setup container has volumes: $setup_volumes"
say "label-studio and backend healthy; setup: no healthcheck, no volume"

python3 - "http://127.0.0.1:$ls_port" "$LABEL_STUDIO_API_KEY" "$PROJECT_TITLE" <<'EOF' || fail "no prediction in Label Studio"
import json, sys, urllib.parse, urllib.request
base, key, title = sys.argv[1:]
def get(path):
    request = urllib.request.Request(base + path, headers={"Authorization": f"Token {key}"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.load(reply)
projects = get("/api/projects/?" + urllib.parse.urlencode({"title": title}))
projects = [p for p in projects.get("results", projects) if p["title"] == title]
assert len(projects) == 1, projects
project = projects[0]["id"]
predictions = get(f"/api/predictions/?project={project}")
brushes = [r for p in predictions for r in p["result"] if r["type"] == "brushlabels"]
assert predictions and brushes, predictions
print(f"[docker-test] Label Studio project {project}: {len(predictions)} prediction(s), {len(brushes)} brush regions, "
      f"model_version {predictions[0]['model_version']}")
EOF
say "PASS: build ${build_seconds}s ($cache_note), image $image_size, total $(($(date +%s) - START))s"
