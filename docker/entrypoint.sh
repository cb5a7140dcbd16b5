#!/bin/sh
# Entrypoint of the std_daq image: the first argument selects the service (hp_io_agent, writer, rest), or runs the
# std_daq command line. SERVICE_NAME, REDIS_URL, BROKER_URL come from the environment; CONFIG_FILE (optional) is
# a mounted JSON config, validated and stored in Redis as config.$SERVICE_NAME when none is stored yet
# (CONFIG_OVERWRITE=1: at every start).
set -eu
service=${1:-hp_io_agent}
[ $# -gt 0 ] && shift
case "$service" in
    hp_io_agent|writer|rest) ;;
    std_daq) exec std_daq "$@" ;;
    *) echo "std_daq_entrypoint: unknown service '$service' (hp_io_agent, writer, rest, or std_daq ...)" >&2; exit 2 ;;
esac
if [ -z "${SERVICE_NAME:-}" ]; then
    echo "std_daq_entrypoint: set SERVICE_NAME=<site>.<node>.$service" >&2
    exit 2
fi
if [ -n "${CONFIG_FILE:-}" ]; then
    # the file seeds the config: a config stored since (PUT /config, std_daq config set) survives restarts
    if [ "${CONFIG_OVERWRITE:-0}" = 1 ]; then
        std_daq config set "$SERVICE_NAME" "$CONFIG_FILE"
    else
        std_daq config set --if-absent "$SERVICE_NAME" "$CONFIG_FILE"
    fi
fi
exec "std_daq_$service" "$@"
