#!/usr/bin/env bash
# Build the std_daq image with the test extras and run the test suite in it, next to the Redis and RabbitMQ of the
# compose file (on the compose network). Needs a Docker engine with the compose plugin.
set -euo pipefail
cd "$(dirname "$0")"

COMPOSE="docker compose -f docker/docker-compose.yml"
docker build -f docker/Dockerfile --build-arg EXTRAS=test,plot -t std_daq:test .
$COMPOSE up -d --wait redis rabbitmq
trap '$COMPOSE down' EXIT
NETWORK=$(docker inspect -f '{{range $name, $_ := .NetworkSettings.Networks}}{{$name}}{{end}}' "$($COMPOSE ps -q redis)")
# the broker is closed from its side through the management API (no rabbitmqctl in the image)
# the image holds no tests: the checkout's are mounted
docker run --rm --network "$NETWORK" \
    -v "$PWD/tests:/opt/std_daq/tests:ro" -v "$PWD/benchmarks:/opt/std_daq/benchmarks:ro" \
    -e REDIS_URL=redis://redis:6379/0 -e BROKER_URL=amqp://guest:guest@rabbitmq:5672/%2F \
    -e RABBITMQ_API_URL=http://rabbitmq:15672 \
    --entrypoint sh std_daq:test \
    -c "cd /tmp && python -m pytest -q -p no:cacheprovider --rootdir /opt/std_daq ${*:-/opt/std_daq/tests}"
