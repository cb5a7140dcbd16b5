"""Entry point of the REST proxy: `std_daq_rest` or `python -m std_daq_service.rest`."""

from __future__ import annotations

import logging
import sys

from std_daq_service.broker import RequestContext, SharedCaller
from std_daq_service.config import RestConfig, exposed_without_token
from std_daq_service.protocol import StatusRequest
from std_daq_service.rest.app import create_app
from std_daq_service.rest.http_server import HttpServer
from std_daq_service.rest.live_page import LivePage, add_live_page
from std_daq_service.rest.preview_feed import PreviewFeed
from std_daq_service.service_runtime import ServiceRuntime

log = logging.getLogger(__name__)

DESCRIPTION = (
    "REST proxy of the PANOSETI DAQ: HTTP endpoints (write_sync, write_async, write_kill, init_hp_io, init_sim, "
    "stop_hp_io, services, requests, requests/<id>, status, config/<service>, health, openapi.json) turned into "
    "broker requests to agents and writers, and a live page at /ui. Binds host:port of its config (default "
    "127.0.0.1:5000)."
)


def main(argv: list[str] | None = None) -> int:
    with ServiceRuntime.boot("rest", DESCRIPTION, RestConfig, argv) as (runtime, stack, config):
        options = runtime.options
        if exposed_without_token(config):
            runtime.refuse(f"host {config.host} is beyond loopback and no token is set: set a token, or "
                           "allow_unauthenticated_remote: true to serve anyone who reaches the port")
        caller = stack.enter_context(SharedCaller(options.broker_url, options.service_name))
        app = create_app(options.service_name, config, caller, runtime.redis)
        feed = stack.enter_context(PreviewFeed(runtime.redis, options.service_name, config.agents))
        add_live_page(app, LivePage(options.service_name, config, caller, runtime.redis, feed))
        server = runtime.start_or_refuse(stack, HttpServer(app, config.host, config.port),
                                         f"cannot listen on {config.host}:{config.port}")
        log.info("REST proxy listening on %s", server.url)

        def status(request: StatusRequest, ctx: RequestContext) -> dict:
            return {"url": server.url, "broker_connected": caller.connected.is_set()}

        return runtime.serve(stack, {"status": status}, lambda: {"url": server.url})


if __name__ == "__main__":
    sys.exit(main())
