"""The caller side's status history: kept per request, ordered by activity, bounded."""

from std_daq_service.broker.status_store import StatusStore
from std_daq_service.protocol import Status


def received(request_id: str) -> Status:
    return Status(request_id=request_id, source="test.a.writer", action="request_received")


def test_recent_lists_the_most_recently_active_first_and_waiting_does_not_reorder():
    store = StatusStore(keep=10)
    for request_id in ("a", "b", "c"):
        store.register(request_id)
    store.add(received("a"))
    assert [rid for rid, _ in store.recent(3)] == ["a", "c", "b"]
    store.wait("b", ["test.a.writer"], timeout=0)
    assert [rid for rid, _ in store.recent(3)] == ["a", "c", "b"]


def test_statuses_of_unregistered_requests_are_kept_only_with_keep_all_and_the_least_active_go_first():
    store = StatusStore(keep=2)
    store.add(received("other"))
    assert store.history("other") is None
    everything = StatusStore(keep=2, keep_all=True)
    for request_id in ("x", "y"):
        everything.add(received(request_id))
    everything.add(received("x"))
    everything.add(received("z"))
    assert everything.history("y") is None and len(everything.history("x")) == 2
