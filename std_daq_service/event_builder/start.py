"""Entry point of the coincidence event builder: `std_daq_event_builder`, `python -m std_daq_service.event_builder`."""

from __future__ import annotations

import sys

import zmq

from std_daq_service.config import EventBuilderConfig
from std_daq_service.event_builder.domes import domes_of_obs_config
from std_daq_service.event_builder.event_assembler import EventAssembler, match_rules
from std_daq_service.event_builder.event_publisher import EventPublisher
from std_daq_service.event_builder.request_handlers import EventBuilderHandlers
from std_daq_service.event_builder.stream_receiver import StreamReceiver
from std_daq_service.protocol import InvalidRequest
from std_daq_service.service_runtime import ServiceRuntime

DESCRIPTION = (
    "Coincidence event builder of the PANOSETI DAQ: subscribes to the pulse-height streams (ph256, ph1024) of "
    "the agents in its config, groups each module's frames into hits, matches hits of several modules (and "
    "domes) within a window of White Rabbit time, and publishes each event on its own ZMQ PUB socket "
    "(events_bind). Requests over RabbitMQ: status, find_coincidences (over an archived run)."
)


def main(argv: list[str] | None = None) -> int:
    with ServiceRuntime.boot("event_builder", DESCRIPTION, EventBuilderConfig, argv) as (runtime, stack, config):
        name = runtime.options.service_name
        try:
            domes = {**(domes_of_obs_config(config.obs_config) if config.obs_config else {}), **config.domes}
        except InvalidRequest as exc:
            runtime.refuse(str(exc))
        rules = match_rules(config, domes)
        assembler = EventAssembler(name, config, rules, [agent.name for agent in config.agents])
        publisher = runtime.start_or_refuse(stack, EventPublisher(config.events_bind, config.advertise_host),
                                            f"cannot bind events_bind {config.events_bind}", zmq.ZMQError)
        receiver = stack.enter_context(StreamReceiver(name, config.agents, assembler, publisher))
        handlers = EventBuilderHandlers(config, rules, receiver)
        return runtime.serve(stack, handlers.handlers(), handlers.beacon_state)


if __name__ == "__main__":
    sys.exit(main())
