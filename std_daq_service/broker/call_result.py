"""What the named services answered to one request: per-target outcomes and the typed error of the call."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from std_daq_service.protocol import (
    DaqError,
    NoServiceAnswered,
    RequestKilled,
    RequestTimeout,
    Status,
    rebuild_error,
)


@dataclass
class CallResult:
    """The statuses of one request seen so far, and what they mean for each target.

    A target that sent nothing did not answer (`NoServiceAnswered`); one that was heard from but sent no
    final status in time timed out (`RequestTimeout`); a `request_fail` is rebuilt as the error class the
    service raised; a `request_killed` is `RequestKilled`.
    """

    request_id: str
    targets: list[str]
    history: list[Status]
    timeout: float
    finals: dict[str, Status] = field(init=False)
    """The final status of each target that sent one."""

    def __post_init__(self) -> None:
        self.finals = {s.source: s for s in self.history if s.is_final and s.source in self.targets}

    @property
    def complete(self) -> bool:
        return all(t in self.finals for t in self.targets)

    @property
    def ok(self) -> bool:
        return self.error() is None

    def error_of(self, target: str) -> DaqError | None:
        """What went wrong for one target, or None if it succeeded."""
        final = self.finals.get(target)
        if final is None:
            heard = any(s.source == target for s in self.history)
            return self._timeout([target]) if heard else self._silent([target])
        if final.action == "request_fail":
            return rebuild_error(final.result, f"{target}: {final.message}")
        if final.action == "request_killed":
            return RequestKilled(f"{target}: request_killed: {final.message}")
        return None

    def error(self) -> DaqError | None:
        """The error of the whole call: silent targets first, then slow ones, then the first failure."""
        missing = [t for t in self.targets if t not in self.finals]
        heard = {s.source for s in self.history}
        silent = [t for t in missing if t not in heard]
        if silent:
            return self._silent(silent)
        if missing:
            return self._timeout(missing)
        return next((e for e in map(self.error_of, self.targets) if e is not None), None)

    def results(self) -> dict[str, dict[str, Any]]:
        """Each target's `result`.

        Raises:
            DaqError: the call's error (`error()`), as its own class.
        """
        error = self.error()
        if error is not None:
            raise error
        return {target: self.finals[target].result or {} for target in self.targets}

    def _silent(self, targets: list[str]) -> NoServiceAnswered:
        return NoServiceAnswered(f"no answer from {', '.join(targets)} within {self.timeout:g} s; is it running? "
                                 "(std_daq list-hosts)")

    def _timeout(self, targets: list[str]) -> RequestTimeout:
        return RequestTimeout(f"{', '.join(targets)} did not finish within {self.timeout:g} s; the request keeps "
                              f"running (request {self.request_id})")
