#!/usr/bin/env bash
# Build the std_daq image and run its services as containers, the way docker/README.md tells a node operator, against
# this machine's Redis and RabbitMQ: the tests of tests/container/ (pytest marker `container`); extra arguments go to
# pytest. The engine is the Docker engine that answers, else podman with runc (installed with apt-get as root when
# missing) serving the Docker API on a socket of its own, so the docker CLI runs unchanged (DOCKER_HOST).
# The base is python:3.11-slim where it can be pulled, else built from Debian's packages (docker/base/build_base.sh).
# Where no engine can run, it says why and exits 0; with --require (or STD_DAQ_REQUIRE_CONTAINERS=1) it exits 1.
# Environment: STD_DAQ_IMAGE (default std_daq), BASE_IMAGE (skip the pull test), STATE_DIR (default run/containers).
set -euo pipefail
cd "$(dirname "$0")"

export STD_DAQ_REQUIRE_CONTAINERS=${STD_DAQ_REQUIRE_CONTAINERS:-0}
if [ "${1:-}" = --require ]; then STD_DAQ_REQUIRE_CONTAINERS=1; shift; fi
export STD_DAQ_IMAGE=${STD_DAQ_IMAGE:-std_daq}
DEFAULT_BASE=$(sed -n 's/^ARG BASE_IMAGE=//p' docker/Dockerfile)
LOCAL_BASE=std_daq-base:bookworm
STATE=${STATE_DIR:-$PWD/run/containers}

say() { echo "[tests_in_docker] $*" >&2; }
cannot_run() {
    say "cannot run containers here: $*"
    if [ "$STD_DAQ_REQUIRE_CONTAINERS" = 1 ]; then exit 1; fi
    say "skipped (--require or STD_DAQ_REQUIRE_CONTAINERS=1 makes this an error)"
    exit 0
}

apt_updated=0
apt_install() {  # apt_install PACKAGE...: as root, those that are not installed yet
    local missing=() package
    for package in "$@"; do dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package"); done
    [ ${#missing[@]} = 0 ] && return 0
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || return 1
    if [ $apt_updated = 0 ]; then DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || return 1; fi
    apt_updated=1
    say "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

engine_answers() { docker info >/dev/null 2>&1; }

podman_conf() {
    # runc: the runtime that works here; ulimits no higher than this shell's hard limits, else runc's setrlimit in
    # the new container is refused (nproc at most pid_max: runc could not set more on the development machine)
    local nofile nproc pid_max
    nofile=$(ulimit -Hn); [ "$nofile" = unlimited ] && nofile=1048576
    nproc=$(ulimit -Hu); [ "$nproc" = unlimited ] && nproc=1048576
    pid_max=$(cat /proc/sys/kernel/pid_max)
    [ "$nproc" -le "$pid_max" ] || nproc=$pid_max
    cat <<EOF
# written by tests_in_docker.sh
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[engine]
runtime = "runc"
EOF
}

start_podman() {
    command -v docker >/dev/null || apt_install docker.io || cannot_run "no docker CLI (apt-get install docker.io)"
    apt_install podman runc uidmap slirp4netns fuse-overlayfs ||
        cannot_run "no Docker engine answers and podman is not installed (apt-get install podman runc)"
    mkdir -p "$STATE"
    podman_conf > "$STATE/containers.conf"
    export CONTAINERS_CONF=$STATE/containers.conf
    export DOCKER_HOST=unix://$STATE/podman.sock
    rm -f "$STATE/podman.sock"
    podman system service --time=0 "$DOCKER_HOST" >"$STATE/podman-service.log" 2>&1 &
    PODMAN_PID=$!
    local i
    for ((i = 0; i < 60; i++)); do
        engine_answers && break
        kill -0 "$PODMAN_PID" 2>/dev/null || cannot_run "podman system service ended: $(tail -3 "$STATE/podman-service.log")"
        sleep 0.5
    done
    engine_answers || cannot_run "podman system service does not answer on $DOCKER_HOST"
    say "podman $(podman --version | awk '{print $3}') with runc serves the Docker API on $DOCKER_HOST"
    if [ ! -d /run/systemd/system ]; then
        run_health_checks &
        HEALTH_PID=$!
    fi
}

run_health_checks() {
    # podman schedules health checks with systemd timers; without systemd, this loop does it: every running
    # container's HEALTHCHECK on its own interval, its result stored as podman's timer would (docker inspect)
    declare -A due
    local id interval now
    while kill -0 "$PODMAN_PID" 2>/dev/null; do
        now=$(date +%s)
        for id in $(podman ps -q 2>/dev/null); do
            if [ -z "${due[$id]:-}" ]; then
                interval=$(podman inspect -f '{{if .Config.Healthcheck}}{{.Config.Healthcheck.Interval.Seconds}}{{end}}' \
                    "$id" 2>/dev/null) || continue
                [ -n "$interval" ] || { due[$id]=never; continue; }
                due[$id]=$((now + ${interval%.*}))
            fi
            [ "${due[$id]}" != never ] && [ "$now" -ge "${due[$id]}" ] || continue
            podman healthcheck run "$id" >/dev/null 2>&1 || true
            interval=$(podman inspect -f '{{.Config.Healthcheck.Interval.Seconds}}' "$id" 2>/dev/null) || continue
            due[$id]=$((now + ${interval%.*}))
        done
        sleep 1
    done
}

pick_base() {  # set BASE: the Dockerfile's default if it is here or can be pulled, else the local base, built
    if [ -n "${BASE_IMAGE:-}" ]; then BASE=$BASE_IMAGE; return; fi
    BASE=$DEFAULT_BASE
    docker image inspect "$BASE" >/dev/null 2>&1 && return
    timeout 120 docker pull -q "$BASE" >/dev/null 2>&1 && return
    say "$DEFAULT_BASE cannot be pulled; building $LOCAL_BASE from Debian's packages"
    BASE=$LOCAL_BASE
    [ "$(id -u)" = 0 ] || cannot_run "the debootstrap of $LOCAL_BASE needs root"
    apt_install debootstrap || cannot_run "debootstrap is missing (apt-get install debootstrap)"
    docker/base/build_base.sh "$LOCAL_BASE"
}

now_ms() { echo $(($(date +%s%N) / 1000000)); }

stop_started() {  # the podman service and health-check loop this script started, by their PIDs
    local pid
    for pid in $HEALTH_PID $PODMAN_PID; do kill "$pid" 2>/dev/null || true; done
    for pid in $HEALTH_PID $PODMAN_PID; do wait "$pid" 2>/dev/null || true; done
}

PODMAN_PID=
HEALTH_PID=
trap stop_started EXIT
engine_answers || start_podman
started=$(now_ms)
pick_base
say "base $BASE ready in $((($(now_ms) - started) / 1000)) s"
probe=$(docker run --rm --net=host "$BASE" true 2>&1) || cannot_run "the engine cannot start a container: $probe"
mkdir -p "$STATE"
started=$(now_ms)
docker build --network host -f docker/Dockerfile --build-arg BASE_IMAGE="$BASE" -t "$STD_DAQ_IMAGE" . >"$STATE/build.log" 2>&1 || {
    tail -40 "$STATE/build.log" >&2; say "docker build failed (log: $STATE/build.log)"; exit 1; }
build_ms=$(($(now_ms) - started))
build_s=$((build_ms / 1000)).$((build_ms % 1000 / 100))
say "built $STD_DAQ_IMAGE on $BASE in ${build_s} s (log: $STATE/build.log)"
./run_tests.sh -m container tests/container "$@"
