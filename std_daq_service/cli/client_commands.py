"""`std_daq ping|reflect-services|write|kill|monitor|plot-view|plot-phdist`: through the Python client."""

from __future__ import annotations

import json
import sys
import threading
import time
from datetime import datetime

from rich.console import Console
from rich.live import Live

from std_daq_service.broker import RequestCaller
from std_daq_service.cli.arguments import module_ids
from std_daq_service.cli.tables import MonitorView
from std_daq_service.cli.write_progress import WriteProgress
from std_daq_service.client import DaqDataClient
from std_daq_service.config import connect_redis, live_services
from std_daq_service.protocol import Status

_FIRST_VIEW_WAIT_S = 10.0


def add_commands(commands) -> None:
    ping = commands.add_parser("ping", help="does a service answer a status request?")
    ping.add_argument("service", help="SERVICE_NAME of an agent, writer or REST proxy")
    ping.add_argument("--timeout", type=float, default=5, help="seconds (default 5)")
    ping.set_defaults(run=run_ping)

    reflect = commands.add_parser("reflect-services", help="request types with their fields, and live services")
    reflect.add_argument("services", nargs="*", help="only these services (default: all live)")
    reflect.set_defaults(run=run_reflect)

    write = commands.add_parser("write", help="record a file with a writer; progress (frames, rate, ETA), a summary",
                                description="Record selected frames into an HDF5 file under the writer's "
                                            "output_root. Give at most one of --n-images, --duration, --stop-time; "
                                            "none records until Ctrl-C (which kills the write).")
    write.add_argument("output_file", help="path relative to the writer's output_root")
    write.add_argument("--writer", help="writer SERVICE_NAME (default: the only live writer)")
    write.add_argument("--sources", help="comma-separated agent names (default: all of the writer's)")
    write.add_argument("--module-ids", help="comma-separated module ids (default: all)")
    write.add_argument("--data-products", help="comma-separated: img16,img8,ph256,ph1024 (default: all)")
    write.add_argument("--n-images", type=int, help="frames per stream")
    write.add_argument("--duration", type=float, help="seconds to record")
    write.add_argument("--start-time", help="Unix ns or ISO 8601 UTC; may lie in the past (ring buffer)")
    write.add_argument("--stop-time", help="Unix ns or ISO 8601 UTC")
    write.add_argument("--timeout-seconds", type=float, default=10, help="fail if the selection is silent this long")
    write.add_argument("--compression", help="none, gzip, lzf, bitshuffle_lz4, blosc_lz4 (default: writer's)")
    write.add_argument("--overwrite", action="store_true", help="replace an existing file")
    write.set_defaults(run=run_write)

    kill = commands.add_parser("kill", help="stop a running request (e.g. a write)")
    kill.add_argument("request_id")
    kill.add_argument("--service", help="the service running it (default: the only live writer)")
    kill.set_defaults(run=run_kill)

    monitor = commands.add_parser("monitor", help="live view of every request's statuses and of live services "
                                                  "(a live table on a terminal)")
    monitor.add_argument("--seconds", type=float, default=0, help="stop after this long (default: until Ctrl-C)")
    monitor.add_argument("--refresh-period", type=float, default=10, help="seconds between service lists (10)")
    monitor.set_defaults(run=run_monitor)

    for name, text in (("plot-view", "live frame viewer: one row per module, pulse height left, movie right"),
                       ("plot-phdist", "pulse-height distributions (max pixel per event) over 10/60/600 s")):
        plot = commands.add_parser(
            name, help=text, description=f"{text}. With --save: draw into a PNG file instead of a window, save "
            "the first complete view (every module seen, after one refresh period) and exit; with --save and "
            "--seconds: refresh the file every refresh period and exit after that long.")
        plot.add_argument("hosts", nargs="*", help="agent SERVICE_NAMEs (default: every live agent)")
        plot.add_argument("--module-ids", help="comma-separated module ids (default: all)")
        plot.add_argument("--refresh-period", type=float, default=1.0, help="seconds between redraws (default 1)")
        plot.add_argument("--save", metavar="PNG", help="save the first complete view into this file and exit")
        plot.add_argument("--seconds", type=float, default=0,
                          help="stop after this long (default: until Ctrl-C, or the first complete view with --save)")
        plot.set_defaults(run=run_plot, plot=name)


def _client(args) -> DaqDataClient:
    return DaqDataClient(broker_url=args.broker_url, redis_url=args.redis_url)


def run_ping(args) -> int:
    with _client(args) as client:
        alive = client.ping(args.service, args.timeout)
    print(f"{args.service}: answers" if alive else f"{args.service}: no answer within {args.timeout:g} s")
    return 0 if alive else 1


def run_reflect(args) -> int:
    with _client(args) as client:
        print(json.dumps(client.reflect_services(args.services or None), indent=2))
    return 0


def run_write(args) -> int:
    fields = {"output_file": args.output_file, "module_ids": module_ids(args.module_ids),
              "data_products": [d for d in (args.data_products or "").split(",") if d],
              "sources": [s for s in (args.sources or "").split(",") if s], "n_images": args.n_images,
              "duration_seconds": args.duration, "start_time": args.start_time, "stop_time": args.stop_time,
              "timeout_seconds": args.timeout_seconds, "compression": args.compression, "overwrite": args.overwrite}
    fields = {k: v for k, v in fields.items() if v not in (None, [], False)}
    with _client(args) as client:
        writer = args.writer or client.default_writer()
        request_id = client.write_async(writer, **fields)
        print(f"write {request_id} on {writer}", file=sys.stderr)
        try:
            with WriteProgress(args.n_images, args.duration, args.stop_time) as progress:
                result = client.wait(request_id, writer, 7 * 86400, progress.update)
        except KeyboardInterrupt:
            client.kill(request_id, writer)
            print("killed; the file keeps what was written", file=sys.stderr)
            return 130
    print(f"{result['output_file']}: {result['frames']} frames, {result['bytes'] / 1e6:.1f} MB, "
          f"missing {result['missing_frames']}, {result['end_reason']}")
    for stream, info in result["streams"].items():
        print(f"  module/dp {stream}: {info['frames']} frames from {info['source']}")
    for warning in result["warnings"]:
        print(f"  warning: {warning}")
    return 0


def run_kill(args) -> int:
    with _client(args) as client:
        service = args.service or client.default_writer()
        client.kill(args.request_id, service)
    print(f"kill sent to {service} for {args.request_id}")
    return 0


def _live_services(redis_url: str) -> dict[str, list]:
    """Each live service with its running requests."""
    return {name: beacon.get("running_requests") or []
            for name, beacon in live_services(connect_redis(redis_url)).items()}


def run_monitor(args) -> int:
    console = Console()
    if sys.stdout.isatty():
        return _monitor_table(args, console)
    start = last = time.monotonic()
    statuses: list[Status] = []
    with RequestCaller(args.broker_url, "std_daq-monitor", listener=statuses.append) as caller:
        _print_services(_live_services(args.redis_url))  # after the status queue is bound: what follows is all seen
        while not args.seconds or time.monotonic() - start < args.seconds:
            caller.pump(0.5)
            for status in statuses:
                when = datetime.fromtimestamp(status.timestamp).strftime("%H:%M:%S")
                request_type = (status.request or {}).get("request_type", "?")
                print(f"{when} {status.request_id[:8]} {request_type:10s} {status.source} {status.action}"
                      f"{': ' + status.message if status.message else ''}", flush=True)
            statuses.clear()
            if time.monotonic() - last >= args.refresh_period:
                last = time.monotonic()
                _print_services(_live_services(args.redis_url))
    return 0


def _print_services(running: dict[str, list]) -> None:
    print(f"-- {len(running)} live: " + ", ".join(f"{n} ({len(r)} running)" for n, r in running.items()), flush=True)


def _monitor_table(args, console: Console) -> int:
    """`monitor` on a terminal: one live table of services and recent requests."""
    start = last = time.monotonic()
    view = MonitorView()
    with RequestCaller(args.broker_url, "std_daq-monitor", listener=view.add) as caller, \
            Live(view.render(), console=console, auto_refresh=False) as live:
        view.services = _live_services(args.redis_url)
        while not args.seconds or time.monotonic() - start < args.seconds:
            caller.pump(0.5)
            if time.monotonic() - last >= args.refresh_period:
                last = time.monotonic()
                view.services = _live_services(args.redis_url)
            live.update(view.render(), refresh=True)
    return 0


def run_plot(args) -> int:
    from std_daq_service.plot import FrameViewer, PulseHeightDistribution

    headless = bool(args.save)
    viewer = args.plot == "plot-view"
    view = FrameViewer(headless) if viewer else PulseHeightDistribution(headless=headless)
    if not headless:
        view.plt.ion()
        view.plt.show()
    stop = threading.Event()
    timer = threading.Timer(args.seconds, stop.set)  # ends the stream even while no frame comes
    timer.daemon = True
    with _client(args) as client:
        images = client.stream_images(args.hosts or None, stream_movie_data=viewer,
                                      update_interval_seconds=0.1 if viewer else 0,
                                      module_ids=module_ids(args.module_ids), stop_event=stop)
        if args.seconds:
            timer.start()
        first = last = 0.0
        try:
            for image in images:
                view.update(image)
                now = time.monotonic()
                first = first or now
                if headless and not args.seconds and now - first >= args.refresh_period and (
                        view.complete or now - first >= _FIRST_VIEW_WAIT_S):
                    break
                if now - last >= args.refresh_period:
                    last = now
                    if headless:
                        view.save(args.save)
                    else:
                        view.draw()
                        view.plt.pause(0.01)
        finally:
            timer.cancel()
            images.close()
    if headless:
        view.save(args.save)
        print(f"saved {args.save}")
    return 0
