#!/usr/bin/env bash
# Run the PANOSETI DAQ system on this machine on the embedded simulation (or a real data dir) until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")"

MOVIE_RATE=1000
PH_RATE=100
MODULES=""
DATA_DIR=""
PORT=5555
RUN_DIR=run
SECONDS_TO_RUN=0

usage() {
    cat <<USAGE
Usage: ./run.sh [options]

Sets up what is missing (.venv, Redis, RabbitMQ; see setup_dev_env.sh), starts a node agent on this machine,
starts a simulated live run from the embedded real Lick 2024-07-25 data (or tracks a real data dir), and shows
the live frame stream until Ctrl-C; then stops every process it started.

Options:
  --movie-rate-hz N   simulated image frames per second per module (default $MOVIE_RATE)
  --ph-rate-hz N      simulated pulse-height frames per second per module (default $PH_RATE)
  --modules LIST      comma-separated module ids to simulate (default: as in the source run: 1,3)
  --data-dir DIR      track this Hashpipe data dir (or archived run dir) instead of simulating
  --port N            ZMQ data port; the preview port is N+1 (default $PORT)
  --run-dir DIR       where logs (DIR/logs/<service>.log) and simulated data go (default ./$RUN_DIR)
  --seconds N         stop by itself after N seconds (default: run until Ctrl-C)
  -h, --help          this help

Services: agent local.node.hp_io_agent (requests over RabbitMQ, frames on tcp://127.0.0.1:PORT).
USAGE
}

while [ $# -gt 0 ]; do
    case "$1" in
        --movie-rate-hz) MOVIE_RATE=$2; shift 2 ;;
        --ph-rate-hz) PH_RATE=$2; shift 2 ;;
        --modules) MODULES=$2; shift 2 ;;
        --data-dir) DATA_DIR=$(realpath "$2"); shift 2 ;;
        --port) PORT=$2; shift 2 ;;
        --run-dir) RUN_DIR=$2; shift 2 ;;
        --seconds) SECONDS_TO_RUN=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "run.sh: unknown option $1 (see ./run.sh --help)" >&2; exit 2 ;;
    esac
done

./setup_dev_env.sh
PY=${VENV:-.venv}/bin/python
STD_DAQ="$PY -m std_daq_service.cli"
mkdir -p "$RUN_DIR/logs" "$RUN_DIR/sim"
RUN_DIR=$(realpath "$RUN_DIR")
AGENT=local.node.hp_io_agent
PIDS=()

cleanup() {
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    echo "[run.sh] stopped everything it started (logs in $RUN_DIR/logs)"
}
trap cleanup EXIT INT TERM

cat > "$RUN_DIR/$AGENT.json" <<JSON
{
  "data_bind": "tcp://127.0.0.1:$PORT",
  "preview_bind": "tcp://127.0.0.1:$((PORT + 1))",
  "sim_data_dir": "$RUN_DIR/sim",
  "run_end_idle_seconds": 30
}
JSON
$STD_DAQ config set "$AGENT" "$RUN_DIR/$AGENT.json" >/dev/null

SERVICE_NAME=$AGENT "$PY" -m std_daq_service.hp_io_agent >"$RUN_DIR/logs/$AGENT.log" 2>&1 &
PIDS+=($!)
echo "[run.sh] started $AGENT (pid ${PIDS[-1]}, log $RUN_DIR/logs/$AGENT.log)"

for _ in $(seq 100); do
    if $STD_DAQ list-hosts --kind hp_io_agent 2>/dev/null | grep -q "^$AGENT"; then break; fi
    if ! kill -0 "${PIDS[-1]}" 2>/dev/null; then
        echo "[run.sh] $AGENT exited; its log:" >&2; cat "$RUN_DIR/logs/$AGENT.log" >&2; exit 1
    fi
    sleep 0.2
done

if [ -n "$DATA_DIR" ]; then
    echo "{\"data_dir\": \"$DATA_DIR\", \"force\": true}" > "$RUN_DIR/init.json"
    $STD_DAQ init "$AGENT" "$RUN_DIR/init.json" >/dev/null
    echo "[run.sh] $AGENT tracks $DATA_DIR"
else
    $STD_DAQ init-sim "$AGENT" --force --movie-rate-hz "$MOVIE_RATE" --ph-rate-hz "$PH_RATE" \
        ${MODULES:+--module-ids "$MODULES"} >/dev/null
    echo "[run.sh] simulating the Lick 2024-07-25 run into $RUN_DIR/sim at $MOVIE_RATE img16 + $PH_RATE ph256 frames/s"
fi

cat <<INFO
[run.sh] running. In another terminal (source .venv/bin/activate first):
    std_daq list-hosts                     live services
    std_daq status $AGENT     files, counts, rates, lag, subscribers
    std_daq stream $AGENT     per-second frame counts of every stream
    std_daq pff info $RUN_DIR/sim/module_*/obs_*/*.pff
[run.sh] live frame stream (Ctrl-C stops everything):
INFO
if [ "$SECONDS_TO_RUN" != 0 ]; then
    $STD_DAQ stream "$AGENT" --seconds "$SECONDS_TO_RUN" || true
    $STD_DAQ status "$AGENT" | head -40
else
    $STD_DAQ stream "$AGENT" || true
fi
