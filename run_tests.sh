#!/usr/bin/env bash
# Run the whole test suite against real Redis, RabbitMQ, ZMQ and HDF5; extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
./setup_dev_env.sh
exec "${VENV:-.venv}/bin/python" -m pytest "$@"
