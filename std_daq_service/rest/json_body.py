"""JSON bodies of the REST proxy's answers, whatever the audit trail or a caller put in them.

orjson refuses integers beyond 64 bits and strings with lone surrogates; the audit trail keeps requests as they came
(a fuzzer's `"targets": -1180591620717411303424` included), so such values are written as text instead of failing
the whole answer.
"""

from __future__ import annotations

from typing import Any

import orjson

_INT_RANGE = range(-(1 << 63), 1 << 64)


def dumps(payload: Any, option: int = 0) -> bytes:
    """`payload` as JSON (numbers, numpy with `orjson.OPT_SERIALIZE_NUMPY`, anything else as `str`)."""
    try:
        return orjson.dumps(payload, default=str, option=option)
    except TypeError:
        return orjson.dumps(_encodable(payload), default=str, option=option)


def _encodable(value: Any) -> Any:
    """`value` with out-of-range integers as their decimal text and lone surrogates replaced."""
    if isinstance(value, dict):
        return {_encodable(k) if isinstance(k, str) else k: _encodable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encodable(v) for v in value]
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, int) and not isinstance(value, bool) and value not in _INT_RANGE:
        return str(value)
    return value
