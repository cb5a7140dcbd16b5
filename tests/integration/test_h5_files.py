"""Recorded files as their readers meet them (real agent, writer, RabbitMQ, ZMQ, HDF5): read while they grow
(SWMR), rolled over into parts with an index, opened by NeXus-aware readers and xarray, exported for tools
without hdf5plugin, and what a crash leaves."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (registers the bitshuffle/blosc filters for reading)
import numpy as np
import pytest
from conftest import REPO, ServiceProcess, service_stack, wait_until
from helpers.services import start_agent, start_writer

from std_daq_service.broker import RequestCaller
from std_daq_service.protocol import StatusRequest, WriteRequest

READER = Path(__file__).resolve().parents[1] / "helpers" / "swmr_reader.py"


@dataclass
class System:
    agent: ServiceProcess
    writer: ServiceProcess
    output_root: Path
    endpoint: str


@pytest.fixture(scope="module")
def system(tmp_path_factory, redis_url, broker_url):
    directory = tmp_path_factory.mktemp("h5files")
    with service_stack(redis_url, broker_url) as stack:
        agent_name = stack.name("hp_io_agent")
        agent, endpoint = start_agent(agent_name, redis_url, stack.redis, directory, movie_rate_hz=1000,
                                      pulse_height_rate_hz=400)
        stack.add(agent)
        writer = stack.add(start_writer(stack.name("writer"), redis_url, stack.redis, directory,
                                        [(agent_name, endpoint)]))
        yield System(agent, writer, directory / "out", endpoint)


@pytest.fixture
def caller(broker_url):
    with RequestCaller(broker_url, "test-h5-files") as caller:
        yield caller


def write(caller, name: str, timeout: float = 30, **fields):
    final = caller.call(name, WriteRequest(**fields), timeout).finals[name]
    assert final.action == "request_success", final.message
    return final


def stream_arrays(group: h5py.Group) -> dict[str, np.ndarray]:
    arrays = {name: group[name][()] for name in group if isinstance(group[name], h5py.Dataset) and name != "counts"}
    arrays.update({f"pff_header/{name}": group["pff_header"][name][()] for name in group["pff_header"]})
    return arrays


def test_a_reader_sees_the_file_grow_valid_at_every_read(system, caller, tmp_path):
    live, final = system.output_root / "live.h5.*.part", system.output_root / "live.h5"  # .<writer tag>.part
    report = tmp_path / "observations.json"
    with subprocess.Popen([sys.executable, str(READER), str(live), str(final), str(report)],
                          stderr=subprocess.PIPE, text=True) as reader:
        try:
            write(caller, system.writer.service_name, output_file="live.h5", module_ids=[1],
                  data_products=["img16"], duration_seconds=4)
            _, errors = reader.communicate(timeout=30)
        finally:
            if reader.poll() is None:
                reader.kill()
    assert reader.returncode == 0, errors
    observations = json.loads(report.read_text())
    counts = [o["n"] for o in observations]
    assert counts == sorted(counts), "the file never shrinks"
    assert len({n for n in counts if n}) >= 2, f"the reader saw the file grow while it was written: {counts}"
    with h5py.File(final) as f:
        group = f["module_1/img16"]
        assert counts[-1] == group.attrs["n_frames"] == group["data"].shape[0], "the last read saw every frame"
        seq, data = group["seq"][()], group["data"]
        for o in observations:
            if o["n"]:
                n = o["n"]
                assert (o["seq_first"], o["seq_last"]) == (seq[0], seq[n - 1])
                assert o["data_sum"] == int(data[:n].sum(dtype=np.int64)), f"the first {n} frames read differ"


def test_rollover_parts_and_their_index_equal_a_single_file_of_the_same_frames(system, caller):
    name = system.writer.service_name
    wait_until(lambda: caller.call(name, StatusRequest(), 10).finals[name].result["ring_buffer"]["seconds"] >= 3,
               15, interval=0.2, message="3 s of frames in the ring buffer")
    stop = time.time_ns() - 200_000_000
    window = {"start_time": stop - 2_000_000_000, "stop_time": stop}  # in the ring buffer: the same frames thrice
    requests = [WriteRequest(output_file="single.h5", **window),  # at once: all while the window is in the buffer
                WriteRequest(output_file="night/rolled.h5", max_frames_per_file=300, **window),
                WriteRequest(output_file="sized.h5", max_file_size_mb=0.5, **window)]
    single, by_frames, by_size = [caller.wait(request_id, [name], 60).finals[name]
                                  for request_id in [caller.publish(name, r) for r in requests]]
    assert all(final.action == "request_success" for final in (single, by_frames, by_size))
    def frames(final) -> dict:
        return {key: (s["frames"], s["missing_frames"], s["first_timestamp_ns"], s["last_timestamp_ns"])
                for key, s in final.result["streams"].items()}

    assert frames(by_frames) == frames(single) == frames(by_size)
    parts = sorted(p.name for p in (system.output_root / "night").iterdir())
    n_img = single.result["streams"]["1/img16"]["frames"]
    assert n_img > 1000, "2 s of img16 at 1 kHz"
    assert parts == ["rolled.h5"] + [f"rolled_part{i:04d}.h5" for i in range(1, len(parts))]
    for part in parts[1:]:  # a part ends when any stream has 300 frames in it
        with h5py.File(system.output_root / "night" / part) as f:
            rows = [f[f"{m}/{dp}/data"].shape[0] for m in f for dp in f[m]]
            assert max(rows) == 300 or part == parts[-1], (part, rows)
    with h5py.File(system.output_root / "single.h5") as one:
        for index_name in ("night/rolled.h5", "sized.h5"):
            with h5py.File(system.output_root / index_name) as index:
                assert bool(index.attrs["complete"]) and len(index.attrs["parts"]) > 1
                for module in one:
                    for dp, group in one[module].items():
                        rolled = index[f"{module}/{dp}"]
                        assert rolled["data"].is_virtual
                        expected, got = stream_arrays(group), stream_arrays(rolled)
                        assert expected.keys() == got.keys()
                        for key in expected:
                            assert np.array_equal(expected[key], got[key]), f"{index_name} {module}/{dp}/{key}"
                        for attr in ("n_frames", "missing_frames", "files", "runs", "first_wr_timestamp_ns",
                                     "last_wr_timestamp_ns", "source", "compression"):
                            assert np.array_equal(group.attrs[attr], rolled.attrs[attr]), attr
                        assert rolled["counts"][()] == group["counts"][()]
    with h5py.File(system.output_root / "night" / "rolled_part0001.h5") as part:
        assert part.attrs["part"] == 1
        assert part.attrs["index_file"] == "rolled.h5" and bool(part.attrs["complete"])
    assert not list(system.output_root.rglob("*.part"))


def test_nexus_readers_and_xarray_get_the_image_stack_with_its_time_axis(system, caller):
    import xarray
    from silx.io.nxdata import NXdata, get_default

    name = system.writer.service_name
    write(caller, name, output_file="nexus.h5", n_images=500)
    write(caller, name, output_file="nexus_rolled.h5", n_images=500, max_frames_per_file=200)
    for file_name in ("nexus.h5", "nexus_rolled.h5"):
        path = system.output_root / file_name
        with h5py.File(path) as f:
            default = get_default(f)  # the root's `default` down to the first stream
            assert default is not None and default.is_valid
            assert default.group.name == "/module_1/img16"
            for module in f:
                for dp in f[module]:
                    nx = NXdata(f[f"{module}/{dp}"])
                    assert nx.is_valid and nx.interpretation == "image" and nx.signal_is_3d
                    assert nx.signal.shape == (500, *f[f"{module}/{dp}/data"].shape[1:])
                    assert nx.axes[0].name.endswith("/wr_timestamp_ns") and nx.axes[0].attrs["units"] == "ns"
                    assert np.array_equal(nx.signal[()], f[f"{module}/{dp}/data"][()])
        dataset = xarray.open_dataset(path, group="module_1/img16", engine="h5netcdf")
        with dataset:
            assert dataset["data"].dims == ("wr_timestamp_ns", "pixel_y", "pixel_x")
            assert dataset["seq"].dims == ("wr_timestamp_ns",) and dataset.sizes["wr_timestamp_ns"] == 500


DUMP_WITHOUT_PLUGINS = """
import sys, h5py, numpy as np
arrays = {}
with h5py.File(sys.argv[1], "r") as f:
    f.visititems(lambda name, item: arrays.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None)
    compressions = {name: f[name].compression for name in arrays if f[name].ndim and f[name].shape[0]}
np.savez(sys.argv[2], **{name.replace("/", "|"): value for name, value in arrays.items()})
assert "hdf5plugin" not in sys.modules
print(sorted(set(compressions.values()), key=str))
"""


def test_export_gives_a_file_that_readers_without_hdf5plugin_open_equal_to_the_source(system, caller, tmp_path):
    name = system.writer.service_name
    write(caller, name, output_file="to_export.h5", n_images=700, max_frames_per_file=256)
    source, copy = system.output_root / "to_export.h5", tmp_path / "plain.h5"
    run = subprocess.run([sys.executable, "-m", "std_daq_service.cli", "h5", "export", str(source), str(copy)],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "(100 %)" in run.stderr and "gzip-compressed" in run.stderr
    dump = subprocess.run([sys.executable, "-c", DUMP_WITHOUT_PLUGINS, str(copy), str(tmp_path / "dump.npz")],
                          capture_output=True, text=True, timeout=120)
    assert dump.returncode == 0, dump.stderr
    assert dump.stdout.strip() == "['gzip']"
    dumped = np.load(tmp_path / "dump.npz")
    with h5py.File(source) as f:
        expected = {}
        f.visititems(lambda key, item: expected.__setitem__(key, item[()]) if isinstance(item, h5py.Dataset)
                     else None)
        assert {key.replace("|", "/") for key in dumped.files} == set(expected)
        for key, value in expected.items():
            assert np.array_equal(dumped[key.replace("/", "|")], value), key
        with h5py.File(copy) as plain:
            assert dict(plain.attrs).keys() == dict(f.attrs).keys()
            scales = [s.name for s in plain["module_1/img16/data"].dims[0].values()]
            assert scales == ["/module_1/img16/wr_timestamp_ns"]
    info = subprocess.run([sys.executable, "-m", "std_daq_service.cli", "h5", "info", str(source)],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    with h5py.File(source) as f:
        parts = list(f.attrs["parts"])
    assert len(parts) >= 3 and f"index of {len(parts)} parts" in info.stdout, info.stdout
    assert "needs hdf5plugin" in info.stdout


def test_a_crash_leaves_whole_parts_and_one_incomplete_part(system, caller, new_service_name, redis_url,
                                                           redis_client, tmp_path):
    name = new_service_name("writer")
    writer = start_writer(name, redis_url, redis_client, tmp_path, [(system.agent.service_name, system.endpoint)])
    out = tmp_path / "out"
    try:
        caller.publish(name, WriteRequest(output_file="crash.h5", module_ids=[1], data_products=["img16"],
                                          max_frames_per_file=300))
        wait_until(lambda: (out / "crash_part0003.h5").exists(), 30, interval=0.05, message="three parts closed")
        writer.process.kill()
        writer.process.wait(15)
    finally:
        writer.stop()
    files = sorted(p.name for p in out.iterdir())
    whole = [f for f in files if not f.endswith(".part")]
    incomplete = [f for f in files if f.endswith(".part")]
    assert len(incomplete) == 1 and incomplete[0].startswith(f"crash_part{len(whole) + 1:04d}.h5."), files
    assert whole == [f"crash_part{i:04d}.h5" for i in range(1, len(whole) + 1)], "no index: the write never ended"
    seq = []
    for part in whole:
        with h5py.File(out / part) as f:
            group = f["module_1/img16"]
            assert group["data"].shape[0] == group.attrs["n_frames"] == 300 and bool(f.attrs["complete"])
            seq.append(group["seq"][()])
    assert (np.diff(np.concatenate(seq)) == 1).all(), "the whole parts hold consecutive frames"


def test_a_rolled_over_name_whose_parts_would_be_too_long_is_refused(system, caller):
    name = system.writer.service_name
    output_file = "x" * 238 + ".h5"  # 241 bytes: fine alone, but x..._part0001.h5.<tag>.part would be 264
    final = caller.call(name, WriteRequest(output_file=output_file, n_images=5, max_frames_per_file=2), 30).finals[name]
    assert final.action == "request_fail" and "longer than 255" in final.message, final.message
    assert final.result["http_status"] == 400
    assert not list(system.output_root.glob("x" * 238 + "*"))
