"""A call's statuses become per-target outcomes and one typed error."""

import pytest

from std_daq_service.broker import CallResult
from std_daq_service.protocol import (
    Busy,
    DaqError,
    NoServiceAnswered,
    RequestKilled,
    RequestTimeout,
    Status,
    error_result,
)

A, B = "test.a.writer", "test.b.writer"


def status(source, action, message="", result=None):
    return Status(request_id="r1", source=source, action=action, message=message, result=result)


def call(*history):
    return CallResult("r1", [A, B], list(history), timeout=3)


def test_every_target_succeeding_gives_each_result():
    result = call(status(A, "request_success", result={"n": 1}), status(B, "request_success"))
    assert result.ok and result.results() == {A: {"n": 1}, B: {}}


def test_a_silent_target_did_not_answer_and_a_heard_one_timed_out():
    result = call(status(A, "request_received"), status(B, "request_received"), status(B, "request_success"))
    assert isinstance(result.error_of(A), RequestTimeout) and result.error_of(B) is None
    assert isinstance(result.error(), RequestTimeout) and "keeps running" in str(result.error())
    silent = call(status(A, "request_received"))
    assert isinstance(silent.error(), NoServiceAnswered) and str(silent.error()).startswith(f"no answer from {B}")
    assert isinstance(silent.error_of(A), RequestTimeout)


def test_a_failure_is_rebuilt_as_the_class_the_service_raised():
    failure = Busy("x.h5 is being written")
    result = call(status(A, "request_success"), status(B, "request_fail", str(failure), error_result(failure)))
    with pytest.raises(Busy, match=f"{B}: x.h5 is being written") as caught:
        result.results()
    assert caught.value.http_status == 409


def test_a_kill_and_an_unexpected_error_keep_their_codes():
    result = call(status(A, "request_killed", "write killed"),
                  status(B, "request_fail", "internal error", error_result(KeyError("k"))))
    assert isinstance(result.error(), RequestKilled) and "request_killed" in str(result.error())
    assert type(result.error_of(B)) is DaqError and result.error_of(B).http_status == 500
