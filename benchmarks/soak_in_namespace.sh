#!/usr/bin/env bash
# Run bench_soak.py (arguments passed on) in a network namespace of its own, with a private Redis and RabbitMQ on
# that namespace's loopback: nothing else on the machine reaches its services (the machine's broker carries other
# users' broadcasts). Needs root, `ip netns`, redis-server and rabbitmq-server. Everything started there is
# stopped by PID and the namespace deleted at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-${VENV:-.venv}/bin/python}
ns=std-daq-soak-$$
work=$(mktemp -d)
stop_all() {
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
    sleep 5
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$work"
}
trap stop_all EXIT
ip netns add "$ns"
ip -n "$ns" link set lo up
in_ns() { ip netns exec "$ns" "$@"; }
in_ns redis-server --bind 127.0.0.1 --port 6379 --save "" --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
rabbit=$work/rabbitmq
mkdir -p "$rabbit"
head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$rabbit/.erlang.cookie"
chmod 600 "$rabbit/.erlang.cookie"
: >"$rabbit/rabbitmq-env.conf"
echo "[]." >"$rabbit/enabled_plugins"
echo "listeners.tcp.default = 127.0.0.1:5672" >"$rabbit/rabbitmq.conf"
export HOME=$rabbit RABBITMQ_CONF_ENV_FILE=$rabbit/rabbitmq-env.conf RABBITMQ_CONFIG_FILE=$rabbit/rabbitmq.conf \
    RABBITMQ_ADVANCED_CONFIG_FILE=$rabbit/advanced.config RABBITMQ_ENABLED_PLUGINS_FILE=$rabbit/enabled_plugins \
    RABBITMQ_NODENAME=soak$$@localhost RABBITMQ_MNESIA_BASE=$rabbit/mnesia RABBITMQ_LOG_BASE=$rabbit/log \
    ERL_EPMD_ADDRESS=127.0.0.1
in_ns /usr/lib/rabbitmq/bin/rabbitmq-server >"$work/rabbitmq.log" 2>&1 &
for _ in $(seq 240); do
    in_ns "$PY" -m std_daq_service.dev_servers check-broker amqp://guest:guest@127.0.0.1:5672/%2F && break
    sleep 0.5
done
in_ns "$PY" -m std_daq_service.dev_servers check-redis redis://127.0.0.1:6379/0
in_ns env -u REDIS_URL -u BROKER_URL PYTHONPATH="$PWD:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}" \
    "$PY" benchmarks/bench_soak.py "$@"
