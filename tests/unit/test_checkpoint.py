"""The agent's checkpoint against a real Redis of its own: stored by a writer thread, a slow Redis made visible."""

from __future__ import annotations

import json
import threading

import pytest
import redis
from helpers.servers import RedisServer, missing_servers

from std_daq_service.hp_io_agent.checkpoint import _TIMEOUT_S, Checkpoint

pytestmark = pytest.mark.skipif(missing_servers() is not None, reason=str(missing_servers()))


@pytest.fixture
def server(tmp_path):
    with RedisServer(tmp_path / "redis") as server:
        yield server


def position(horizon: int) -> dict:
    return {"file": "/data/f.pff", "run": "r", "offset": 0, "frames_read": 0, "first_header": None, "next_seq": 0,
            "publish_from_seq": horizon}


def test_a_stored_checkpoint_confirms_its_horizons_and_wakes_the_tracker(server):
    woken = threading.Event()
    with Checkpoint(server.url, "agent", woken.set) as checkpoint:
        checkpoint.set_tracking({"data_dir": "/data"})
        checkpoint.save_streams({"1/img16": position(100)})
        assert checkpoint.flush(10) and woken.is_set()
        assert checkpoint.confirmed == {"1/img16": 100} and checkpoint.failures == 0
    stored = json.loads(redis.Redis.from_url(server.url).get("checkpoint.agent"))
    assert stored["streams"]["1/img16"]["publish_from_seq"] == 100


def test_redis_slower_than_the_timeout_is_counted_and_publishing_goes_on_until_a_write_succeeds(server):
    """The cause of "cannot write the checkpoint (Timeout reading from socket)": a Redis reply later than the
    client's timeout. Writes run in their own thread, so the tracker never waits for it; the failure is counted,
    shown in `error`, and lifts the publishing bound (None) until the next write succeeds."""
    admin = redis.Redis.from_url(server.url)
    with Checkpoint(server.url, "agent") as checkpoint:
        checkpoint.set_tracking({"data_dir": "/data"})
        assert checkpoint.flush(10)
        admin.execute_command("CLIENT", "PAUSE", int((_TIMEOUT_S + 2) * 1000), "WRITE")
        checkpoint.save_streams({"1/img16": position(100)})
        assert checkpoint.busy, "the caller does not wait for Redis"
        assert checkpoint.flush(_TIMEOUT_S + 10)
        assert checkpoint.failures == 1 and "Timeout" in checkpoint.error
        assert checkpoint.confirmed is None, "publishing goes on without a bound while the checkpoint fails"
        admin.execute_command("CLIENT", "UNPAUSE")
        checkpoint.save_streams({"1/img16": position(200)})
        assert checkpoint.flush(10)
        assert checkpoint.error is None and checkpoint.confirmed == {"1/img16": 200}
