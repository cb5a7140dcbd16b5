"""Entry point of the HDF5 writer: `std_daq_writer` or `python -m std_daq_service.writer`."""

from __future__ import annotations

import sys

from std_daq_service.config import WriterConfig
from std_daq_service.service_runtime import ServiceRuntime
from std_daq_service.writer.event_receiver import EventReceiver
from std_daq_service.writer.request_handlers import WriterHandlers, check_output_root
from std_daq_service.writer.ring_buffer import RingBuffer
from std_daq_service.writer.stream_receiver import StreamReceiver

DESCRIPTION = (
    "HDF5 writer of the PANOSETI DAQ: subscribes to the frame streams of the agents in its config, keeps the "
    "last ring_buffer_seconds of every stream, and records selected frames (also from before the request) into "
    "HDF5 files under output_root; what lies before the ring buffer is replayed from the agents' PFF files. "
    "Requests over RabbitMQ: write, status; kill stops a write."
)


def main(argv: list[str] | None = None) -> int:
    with ServiceRuntime.boot("writer", DESCRIPTION, WriterConfig, argv) as (runtime, stack, config):
        problem = check_output_root(config)
        if problem:
            runtime.refuse(problem)
        ring = RingBuffer(config.ring_buffer_seconds, config.ring_buffer_bytes)
        receiver = stack.enter_context(StreamReceiver(runtime.options.service_name, config.agents, ring))
        events = stack.enter_context(EventReceiver(config.event_builders, RingBuffer(
            config.ring_buffer_seconds, config.ring_buffer_bytes)))
        handlers = WriterHandlers(runtime.options.service_name, config, receiver, events, runtime.options.broker_url)
        return runtime.serve(stack, handlers.handlers(), handlers.beacon_state, handlers.metrics)


if __name__ == "__main__":
    sys.exit(main())
