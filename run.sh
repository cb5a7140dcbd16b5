#!/usr/bin/env bash
# Run the PANOSETI DAQ system on this machine (agent, writer, REST proxy) on the embedded simulation until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")"

MOVIE_RATE=1000
PH_RATE=100
MODULES=""
DATA_DIR=""
PORT=5555
REST_PORT=5000
RUN_DIR=run
RECORD_SECONDS=2
SECONDS_TO_RUN=0

usage() {
    cat <<USAGE
Usage: ./run.sh [options]

Sets up what is missing (.venv, Redis, RabbitMQ; see setup_dev_env.sh), starts on this machine a node agent, an
HDF5 writer and the REST proxy, starts a simulated live run from the embedded real Lick 2024-07-25 data (or
tracks a real data dir), records a file through the REST API and shows what it holds, then shows the live frame
stream until Ctrl-C; then stops every process it started, and only those.

Options:
  --movie-rate-hz N   simulated image frames per second per module (default $MOVIE_RATE)
  --ph-rate-hz N      simulated pulse-height frames per second per module (default $PH_RATE)
  --modules LIST      comma-separated module ids to simulate (default: as in the source run: 1,3)
  --data-dir DIR      track this Hashpipe data dir (or archived run dir) instead of simulating
  --port N            ZMQ data port; the preview port is N+1 (default $PORT)
  --rest-port N       REST proxy port on 127.0.0.1 (default $REST_PORT)
  --record-seconds N  length of the demonstration file recorded at start (default $RECORD_SECONDS; 0: none)
  --run-dir DIR       logs (DIR/logs/<service>.log), simulated data (DIR/sim), files (DIR/out) (default ./$RUN_DIR)
  --seconds N         stop by itself after N seconds (default: run until Ctrl-C)
  -h, --help          this help

Services: local.node.hp_io_agent (frames on tcp://127.0.0.1:PORT), local.node.writer (files under RUN_DIR/out),
local.node.rest (http://127.0.0.1:REST_PORT).
USAGE
}

while [ $# -gt 0 ]; do
    case "$1" in
        --movie-rate-hz) MOVIE_RATE=$2; shift 2 ;;
        --ph-rate-hz) PH_RATE=$2; shift 2 ;;
        --modules) MODULES=$2; shift 2 ;;
        --data-dir) DATA_DIR=$(realpath "$2"); shift 2 ;;
        --port) PORT=$2; shift 2 ;;
        --rest-port) REST_PORT=$2; shift 2 ;;
        --record-seconds) RECORD_SECONDS=$2; shift 2 ;;
        --run-dir) RUN_DIR=$2; shift 2 ;;
        --seconds) SECONDS_TO_RUN=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "run.sh: unknown option $1 (see ./run.sh --help)" >&2; exit 2 ;;
    esac
done

./setup_dev_env.sh
PY=${VENV:-.venv}/bin/python
STD_DAQ="$PY -m std_daq_service.cli"
mkdir -p "$RUN_DIR/logs" "$RUN_DIR/sim" "$RUN_DIR/out"
RUN_DIR=$(realpath "$RUN_DIR")
AGENT=local.node.hp_io_agent
WRITER=local.node.writer
REST=local.node.rest
REST_URL=http://127.0.0.1:$REST_PORT
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

# start_service NAME MODULE: store RUN_DIR/NAME.json in Redis, start the service, wait for its liveness beacon
start_service() {
    local name=$1 module=$2 log="$RUN_DIR/logs/$1.log"
    $STD_DAQ config set "$name" "$RUN_DIR/$name.json" >/dev/null
    SERVICE_NAME=$name "$PY" -m "$module" >"$log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 150); do
        if $STD_DAQ list-hosts 2>/dev/null | grep -q "^$name"; then
            echo "[run.sh] started $name (pid ${PIDS[-1]}, log $log)"
            return 0
        fi
        if ! kill -0 "${PIDS[-1]}" 2>/dev/null; then
            echo "[run.sh] $name exited; its log:" >&2; cat "$log" >&2; exit 1
        fi
        sleep 0.2
    done
    echo "[run.sh] $name did not come up in 30 s; its log:" >&2; cat "$log" >&2; exit 1
}

cat > "$RUN_DIR/$AGENT.json" <<JSON
{
  "data_bind": "tcp://127.0.0.1:$PORT",
  "preview_bind": "tcp://127.0.0.1:$((PORT + 1))",
  "sim_data_dir": "$RUN_DIR/sim",
  "run_end_idle_seconds": 30
}
JSON
cat > "$RUN_DIR/$WRITER.json" <<JSON
{
  "agents": [{"name": "$AGENT", "data": "tcp://127.0.0.1:$PORT"}],
  "output_root": "$RUN_DIR/out",
  "ring_buffer_seconds": 10
}
JSON
cat > "$RUN_DIR/$REST.json" <<JSON
{"host": "127.0.0.1", "port": $REST_PORT, "writers": ["$WRITER"]}
JSON
start_service "$AGENT" std_daq_service.hp_io_agent
start_service "$WRITER" std_daq_service.writer
start_service "$REST" std_daq_service.rest

if [ -n "$DATA_DIR" ]; then
    echo "{\"data_dir\": \"$DATA_DIR\", \"force\": true}" > "$RUN_DIR/init.json"
    $STD_DAQ init "$AGENT" "$RUN_DIR/init.json" >/dev/null
    echo "[run.sh] $AGENT tracks $DATA_DIR"
else
    $STD_DAQ init-sim "$AGENT" --force --movie-rate-hz "$MOVIE_RATE" --ph-rate-hz "$PH_RATE" \
        ${MODULES:+--module-ids "$MODULES"} >/dev/null
    echo "[run.sh] simulating the Lick 2024-07-25 run into $RUN_DIR/sim at $MOVIE_RATE img16 + $PH_RATE ph256 frames/s"
fi

if [ "$RECORD_SECONDS" != 0 ]; then
    FILE=demo_$(date -u +%Y%m%dT%H%M%SZ).h5
    echo "[run.sh] recording $RECORD_SECONDS s into $FILE through the REST API: POST $REST_URL/write_sync"
    if OUTPUT=$("$PY" - "$REST_URL/write_sync" "{\"output_file\": \"$FILE\", \"duration_seconds\": $RECORD_SECONDS}" <<'POST'
import json, sys, urllib.error, urllib.request
url, body = sys.argv[1], sys.argv[2].encode()
request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
try:
    answer = json.load(urllib.request.urlopen(request, timeout=120))
except urllib.error.HTTPError as error:
    answer = json.load(error)
if answer["status"] != "ok":
    sys.exit(answer["message"])
print(answer["response"]["output_file"])
POST
    ); then
        $STD_DAQ h5 info "$OUTPUT"
    else
        echo "[run.sh] the recording failed (see above and $RUN_DIR/logs)" >&2
    fi
fi

cat <<INFO
[run.sh] running. REST proxy: $REST_URL (OpenAPI: $REST_URL/openapi.json). Try:
    curl -s $REST_URL/services
    curl -s -X POST $REST_URL/write_sync -H 'Content-Type: application/json' \\
         -d '{"output_file": "two_seconds.h5", "duration_seconds": 2}'
    curl -s -X POST $REST_URL/write_async -H 'Content-Type: application/json' -d '{"output_file": "long.h5"}'
    curl -s -X POST $REST_URL/write_kill -H 'Content-Type: application/json' -d '{"request_id": "<id>"}'
    curl -s $REST_URL/requests/<id>
  or the CLI (source .venv/bin/activate first):
    std_daq status $AGENT     files, counts, rates, lag, subscribers
    std_daq write pretrigger.h5 --start-time \$(date -u -d '-3 sec' +%Y-%m-%dT%H:%M:%S) --duration 5
    std_daq monitor                        every request's statuses as they happen
    std_daq plot-view                      live frame viewer (--save view.png without a display)
    std_daq h5 info $RUN_DIR/out/*.h5
[run.sh] live frame stream (Ctrl-C stops everything):
INFO
if [ "$SECONDS_TO_RUN" != 0 ]; then
    $STD_DAQ stream "$AGENT" --seconds "$SECONDS_TO_RUN" || true
else
    $STD_DAQ stream "$AGENT" || true
fi
