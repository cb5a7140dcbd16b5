"""Entry point of the REST proxy: `std_daq_rest` or `python -m std_daq_service.rest`."""

from __future__ import annotations

import logging
import sys
import threading
from contextlib import ExitStack

from waitress import create_server

from std_daq_service.broker import RequestContext, SharedCaller
from std_daq_service.config import RestConfig
from std_daq_service.protocol import StatusRequest
from std_daq_service.rest.app import create_app
from std_daq_service.service_runtime import ServiceRuntime

log = logging.getLogger(__name__)

DESCRIPTION = (
    "REST proxy of the PANOSETI DAQ: HTTP endpoints (write_sync, write_async, write_kill, init_hp_io, init_sim, "
    "stop_hp_io, services, requests/<id>, status, config/<service>, health, openapi.json) turned into broker "
    "requests to agents and writers. Binds host:port of its config (default 127.0.0.1:5000)."
)


def main(argv: list[str] | None = None) -> int:
    runtime = ServiceRuntime("rest", RestConfig, DESCRIPTION, argv)
    config: RestConfig = runtime.config
    with ExitStack() as stack:
        caller = stack.enter_context(SharedCaller(runtime.broker_url, runtime.service_name))
        app = create_app(runtime.service_name, config, caller, runtime.redis)
        try:
            server = create_server(app, host=config.host, port=config.port, threads=16)
        except OSError as exc:
            runtime.refuse(f"cannot listen on {config.host}:{config.port}: {exc}")
        thread = threading.Thread(target=server.run, name="http", daemon=True)
        thread.start()
        stack.callback(thread.join, 10)
        stack.callback(server.close)
        url = f"http://{config.host}:{server.effective_port}"
        log.info("REST proxy listening on %s", url)

        def status(request: StatusRequest, ctx: RequestContext) -> dict:
            return {"url": url, "broker_connected": caller.connected.is_set()}

        return runtime.serve(stack, {"status": status}, lambda: {"url": url})


if __name__ == "__main__":
    sys.exit(main())
