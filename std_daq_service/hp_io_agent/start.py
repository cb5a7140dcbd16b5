"""Entry point of the node agent: `std_daq_hp_io_agent` or `python -m std_daq_service.hp_io_agent`."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import zmq

from std_daq_service.config import HpIoAgentConfig
from std_daq_service.hp_io_agent.checkpoint import Checkpoint
from std_daq_service.hp_io_agent.file_watcher import FileWatcher
from std_daq_service.hp_io_agent.frame_publisher import FramePublisher
from std_daq_service.hp_io_agent.replay_publisher import ReplayPublisher
from std_daq_service.hp_io_agent.request_handlers import AgentHandlers
from std_daq_service.hp_io_agent.socket_hook import SocketHook
from std_daq_service.hp_io_agent.tracker import Tracker, Tracking
from std_daq_service.protocol import DaqError
from std_daq_service.service_runtime import ServiceRuntime

log = logging.getLogger(__name__)

DESCRIPTION = (
    "Node agent of the PANOSETI DAQ: finds Hashpipe runs under a data dir, tails their PFF files and publishes "
    "every frame over ZMQ (plus a preview stream); can replay an archived run as a live one (init_sim). "
    "Past windows are published again from the files on a replay socket (replay). "
    "Requests over RabbitMQ: init_hp_io, init_sim, stop_hp_io, status, stream, replay."
)


def main(argv: list[str] | None = None) -> int:
    with ServiceRuntime.boot("hp_io_agent", DESCRIPTION, HpIoAgentConfig, argv) as (runtime, stack, config):
        options = runtime.options
        watcher = stack.enter_context(FileWatcher(config.poll_interval_seconds))
        publisher = runtime.start_or_refuse(
            stack, FramePublisher(options.service_name, config.data_bind, config.preview_bind, config.send_hwm,
                                  watcher.wake),
            f"cannot bind {config.data_bind} / {config.preview_bind}", zmq.ZMQError,
        )
        replays = runtime.start_or_refuse(
            stack, ReplayPublisher(config.replay_bind, config.replay_max_frames_per_second,
                                   config.replay_max_bytes_per_second),
            f"cannot bind {config.replay_bind}", zmq.ZMQError,
        )
        hook = None
        if config.socket_hook:
            hook = runtime.start_or_refuse(
                stack, SocketHook(config.socket_path_template, publisher.publish_socket, config.max_batch_frames),
                "socket hook")
        checkpoint = stack.enter_context(Checkpoint(options.redis_url, options.service_name, watcher.wake))
        state = checkpoint.load()
        tracker = stack.enter_context(
            Tracker(publisher, watcher, config.run_end_idle_seconds, config.max_batch_frames, hook, checkpoint,
                    config.rollover_grace_seconds)
        )
        handlers = stack.enter_context(AgentHandlers(options.service_name, config, tracker, replays))
        if config.data_dir:
            tracker.track(Tracking(Path(config.data_dir), set(), 1.0), "reinit", f"tracking {config.data_dir}")
        elif state.get("tracking"):
            try:
                handlers.resume(state, checkpoint.resume_positions())
            except DaqError as exc:
                log.error("could not resume after the restart: %s; waiting for an init", exc)
        return runtime.serve(stack, handlers.handlers(), handlers.beacon_state, handlers.metrics)


if __name__ == "__main__":
    sys.exit(main())
