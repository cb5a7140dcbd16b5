#!/usr/bin/env bash
# Prepare this checkout for development and tests; safe to run any number of times.
#  1. a virtualenv in .venv with the package (editable) and its test extras;
#  2. a Redis server on 127.0.0.1:6379 and a RabbitMQ server on 127.0.0.1:5672 (guest/guest) that answer:
#     started if installed, installed with apt-get (as root) if not, or run with docker if an engine answers;
#  3. every tests/redis_configs/<service_name>.json loaded into Redis as config.<service_name>;
#  4. Debian's chromium and chromium-driver (apt-get, as root) for the live page's browser test, when missing;
#  5. Debian's iptables (as root), when missing: the several-hosts tests slow their links through it where the
#     kernel lacks tc netem.
# Environment: VENV (default .venv), REDIS_URL, BROKER_URL (the servers to check; defaults are local).
set -euo pipefail
cd "$(dirname "$0")"

VENV=${VENV:-.venv}
PY=$VENV/bin/python
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
export BROKER_URL=${BROKER_URL:-amqp://guest:guest@127.0.0.1:5672/%2F}

say() { echo "[setup_dev_env] $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

apt_updated=0
apt_install() {
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || return 1
    if [ $apt_updated = 0 ]; then
        say "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || return 1
        apt_updated=1
    fi
    say "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

make_venv() {
    if [ -x "$PY" ] && "$PY" -c "import pip" 2>/dev/null; then return; fi
    say "creating virtualenv $VENV"
    rm -rf "$VENV"
    # Debian's python3 lacks ensurepip until python3-venv is installed: venv then fails with a long message that
    # reads like the end of the setup; it is expected, and answered by installing python3-venv
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
        rm -rf "$VENV"
        say "python3 -m venv needs Debian's python3-venv package; installing it"
        apt_install python3-venv || die "python3 -m venv failed; install python3-venv (apt-get install python3-venv)"
        python3 -m venv "$VENV"
    fi
}

install_package() {
    local stamp=$VENV/.installed
    local digest
    digest=$(cat setup.py pyproject.toml constraints.txt setup_dev_env.sh | sha256sum | cut -d' ' -f1)
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$digest" ]; then return; fi
    say "installing std_daq_service with its test and plot extras into $VENV"
    local log=$VENV/pip-install.log
    "$PY" -m pip install -q -c constraints.txt --upgrade pip >"$log" 2>&1 || true
    # constraints.txt pins the tested version of every dependency (the Docker image installs the same set)
    "$PY" -m pip install -q -c constraints.txt -e ".[test,plot]" >>"$log" 2>&1 || {
        cat "$log" >&2; die "pip install failed (log above)"; }
    # PANOSETI's own PFF reader, to compare readings in the tests; its plotting and zarr dependencies are not needed
    "$PY" -m pip install -q --no-deps "pypff==1.0.4" >>"$log" 2>&1 || { cat "$log" >&2; die "pip install pypff failed"; }
    echo "$digest" > "$stamp"
}

redis_answers() { "$PY" -m std_daq_service.dev_servers check-redis "$REDIS_URL" 2>/dev/null; }
rabbit_answers() { "$PY" -m std_daq_service.dev_servers check-broker "$BROKER_URL" 2>/dev/null; }

wait_for() {  # wait_for NAME CHECK SECONDS
    local i
    for ((i = 0; i < $3; i++)); do
        if $2; then return 0; fi
        sleep 1
    done
    return 1
}

docker_answers() { command -v docker >/dev/null && docker info >/dev/null 2>&1; }

ensure_redis() {
    if redis_answers; then return; fi
    say "Redis does not answer at $REDIS_URL; starting one"
    if ! command -v redis-server >/dev/null; then
        apt_install redis-server || true
    fi
    if command -v redis-server >/dev/null; then
        redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
            --logfile /tmp/std_daq_redis.log >/dev/null
    elif docker_answers; then
        docker run -d --name std_daq_redis -p 127.0.0.1:6379:6379 redis:7 >/dev/null
    else
        die "no Redis at $REDIS_URL and none could be installed; install redis-server or set REDIS_URL"
    fi
    wait_for redis redis_answers 30 || die "Redis started but does not answer at $REDIS_URL (log: /tmp/std_daq_redis.log)"
}

ensure_rabbitmq() {
    if rabbit_answers; then return; fi
    say "RabbitMQ does not answer at $BROKER_URL; starting one (this takes a few seconds)"
    if ! command -v rabbitmq-server >/dev/null && [ ! -x /usr/sbin/rabbitmq-server ]; then
        apt_install rabbitmq-server || true
    fi
    if command -v rabbitmq-server >/dev/null || [ -x /usr/sbin/rabbitmq-server ]; then
        PATH=$PATH:/usr/sbin rabbitmq-server -detached >/dev/null 2>&1 || true
    elif docker_answers; then
        docker run -d --name std_daq_rabbitmq -p 127.0.0.1:5672:5672 -p 127.0.0.1:15672:15672 \
            rabbitmq:3-management >/dev/null
    else
        die "no RabbitMQ at $BROKER_URL and none could be installed; install rabbitmq-server or set BROKER_URL"
    fi
    wait_for rabbitmq rabbit_answers 90 || die "RabbitMQ started but does not answer at $BROKER_URL"
}

ensure_chromium() {
    if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then return; fi
    say "installing chromium and chromium-driver (the live page's browser test drives them)"
    apt_install chromium chromium-driver || say "WARNING: no chromium; tests/integration/test_webview.py will fail"
}

ensure_iptables() {
    if [ "$(id -u)" != 0 ] || command -v iptables >/dev/null; then return; fi
    say "installing iptables (tests/integration/test_multihost.py delays its links through it without tc netem)"
    apt_install iptables || say "WARNING: no iptables; the multihost delay test skips where tc netem is missing"
}

make_venv
install_package
ensure_chromium
ensure_iptables
ensure_redis
ensure_rabbitmq
"$PY" -m std_daq_service.cli --redis-url "$REDIS_URL" config load tests/redis_configs
say "ready: Redis $REDIS_URL, RabbitMQ $BROKER_URL, virtualenv $VENV"
