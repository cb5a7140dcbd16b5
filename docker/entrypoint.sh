#!/bin/sh
# Entrypoint of the std_daq image: the first argument selects the service (hp_io_agent, writer, rest), or runs the
# std_daq command line. SERVICE_NAME, REDIS_URL, BROKER_URL come from the environment; CONFIG_FILE (optional) is
# a mounted JSON config that is validated and stored in Redis as config.$SERVICE_NAME before the service starts.
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
    std_daq config set "$SERVICE_NAME" "$CONFIG_FILE"
fi
exec "std_daq_$service" "$@"
