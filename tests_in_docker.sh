#!/usr/bin/env bash
# Build the std_daq image with the test extras and run the test suite in it against Redis and RabbitMQ of the
# compose file (published on this host's loopback). Needs a Docker engine with the compose plugin.
set -euo pipefail
cd "$(dirname "$0")"

COMPOSE="docker compose -f docker/docker-compose.yml"
docker build -f docker/Dockerfile --build-arg EXTRAS=test,plot -t std_daq:test .
$COMPOSE up -d --wait redis rabbitmq
trap '$COMPOSE down' EXIT
# the suite closes broker connections with rabbitmqctl: run it in the rabbitmq container
RABBIT=$($COMPOSE ps -q rabbitmq)
docker run --rm --network "container:$RABBIT" \
    -e REDIS_URL=redis://redis:6379/0 -e BROKER_URL=amqp://guest:guest@127.0.0.1:5672/%2F \
    --add-host redis:"$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$($COMPOSE ps -q redis)")" \
    --user 0 --entrypoint sh std_daq:test -c \
    "apt-get update -qq && apt-get install -y -qq rabbitmq-server >/dev/null && cd /opt/std_daq && python -m pytest -q $*"
